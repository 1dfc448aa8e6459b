"""Run by test_stack_smoke under horovodrun: allreduce and parameter broadcast over gloo."""
import horovod.torch as hvd
import torch

hvd.init()
total = hvd.allreduce(torch.tensor([float(hvd.rank() + 1)]), op=hvd.Sum)
model = torch.nn.Linear(3, 1)
torch.nn.init.constant_(model.weight, float(hvd.rank()))
hvd.broadcast_parameters(model.state_dict(), root_rank=0)
print(f"rank={hvd.rank()} size={hvd.size()} sum={total.item():.0f} weight={model.weight.sum().item():.0f}", flush=True)
