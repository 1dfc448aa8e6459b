"""Every model's forward/backward on a tiny batch; ablations really remove what they name."""
import pytest
import torch

from psrq.models.ranker import ARCHITECTURES, build_model

B, N, L, K, V, D = 6, 5, 3, 16, 40, 8


def batch(spaces=("text", "audio", "joint"), seed=0):
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor([0, 1, 5, 3, 2, 5])
    hist = torch.randint(2, V, (B, N), generator=g) * (torch.arange(N)[None] < lens[:, None])
    b = {"item_idx": torch.randint(1, V, (B,), generator=g), "hist_item_idx": hist, "hist_len": lens,
         "label": torch.tensor([0, 1, 1, 0, 1, 0], dtype=torch.float32)}
    for s in spaces:
        b[f"target_{s}_codes"] = torch.randint(1, K + 1, (B, L), generator=g)
        codes = torch.randint(1, K + 1, (B, N, L), generator=g) * (torch.arange(N)[None, :, None] < lens[:, None, None])
        b[f"hist_{s}_codes"] = codes.view(B, N * L)
    return b


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_forward_backward_on_a_tiny_batch(name):
    torch.manual_seed(0)
    model = build_model(name, V, K, L, N, D)
    data = batch()
    logits = model(data)
    assert logits.shape == (B,) and torch.isfinite(logits).all()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, data["label"])
    loss.backward()
    used = [p for p in model.parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert len(used) == len([p for p in model.parameters()])  # every parameter takes part
    # a few steps of Adam lower the loss on the batch
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = loss.item()
    for _ in range(30):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(data), data["label"])
        loss.backward()
        opt.step()
    assert loss.item() < first


def test_each_model_reads_only_what_it_needs():
    for name, spaces in {"din": [], "din_codes": ["text"], "mcca": ["audio", "joint", "text"],
                         "mcca_wo_msc": ["joint"], "mcca_wo_mjc": ["audio", "text"]}.items():
        model = build_model(name, V, K, L, N, D)
        assert sorted(model.spaces) == spaces, name
        full = batch()
        reduced = {k: v for k, v in full.items() if k in model.inputs}
        model.eval()
        assert torch.equal(model(full), model(reduced))  # nothing outside `inputs` is read


def test_ablations_remove_what_they_name():
    mcca = build_model("mcca", V, K, L, N, D)
    wo_msc = build_model("mcca_wo_msc", V, K, L, N, D)
    wo_mjc = build_model("mcca_wo_mjc", V, K, L, N, D)
    # w/o MSC: no modal-specific codebooks or sequences
    assert not any(k.startswith(("semantic.text", "semantic.audio")) for k, _ in wo_msc.named_parameters())
    assert not any("hist_text" in c or "hist_audio" in c for c in wo_msc.inputs)
    # w/o MJC: no joint codebook, no shared joint query; each modality queried by itself
    assert not any("joint" in k for k, _ in wo_mjc.named_parameters())
    assert set(wo_mjc.attention) == {"text_by_text", "audio_by_audio"}
    assert set(mcca.attention) == {"text_by_joint", "audio_by_joint", "joint_by_joint"}
    # MCCA's target is represented by its joint embedding only (the shared query e_o)
    assert "target_text_codes" not in mcca.inputs and "target_joint_codes" in mcca.inputs


def test_padding_positions_do_not_matter():
    model = build_model("mcca", V, K, L, N, D).eval()
    a = batch()
    b = {k: v.clone() for k, v in a.items()}
    # change what sits in padded history positions (beyond hist_len) only
    b["hist_item_idx"][0] = 7
    b["hist_joint_codes"][3, 3 * L:] = 5
    assert torch.allclose(model(a), model(b))


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown model 'vbpr2'"):
        build_model("vbpr2", V, K, L, N, D)
