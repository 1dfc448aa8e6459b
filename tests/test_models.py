"""Every model's forward/backward on a tiny batch; ablations really remove what they name."""
import numpy as np
import pytest
import torch

from psrq.models.registry import BUILT_IN, ModelArgs, build_model
from psrq.samples.content import ContentFeatures

B, N, L, K, V, D = 6, 5, 3, 16, 40, 8
C, CD = 30, 4  # catalogue size, content width


def content(seed=0):
    rng = np.random.default_rng(seed)
    mods = {m: rng.standard_normal((C + 1, CD)).astype(np.float32) for m in ("text", "audio")}
    for v in mods.values():
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        v[0] = 0
    codes = {"qarm_vq": rng.integers(1, 9, (C + 1, 1)).astype(np.int16), "qarm_rq": rng.integers(1, 9, (C + 1, 2)).astype(np.int16)}
    for v in codes.values():
        v[0] = 0
    return ContentFeatures(np.arange(-1, C), mods, codes)


def model(name, **options):
    torch.manual_seed(0)
    return build_model(ModelArgs(name, V, K, L, N, D, options=options), content())


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
    b["content_idx"] = torch.randint(1, C + 1, (B,), generator=g)
    b["hist_content_idx"] = torch.randint(1, C + 1, (B, N), generator=g) * (torch.arange(N)[None] < lens[:, None])
    return b


def loss_of(m, data):
    from psrq.training.loop import batch_loss

    return batch_loss(m, m, data)


@pytest.mark.parametrize("name", list(BUILT_IN))
def test_forward_backward_on_a_tiny_batch(name):
    from psrq.training.optim import make_optimizer

    m = model(name)
    data = batch()
    logits = m.logits(data)
    assert logits.shape == (B,) and torch.isfinite(logits).all()
    loss = loss_of(m, data)
    loss.backward()
    unused = [n for n, p in m.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert unused == []  # every parameter takes part
    # a few steps of Adam lower the loss on the batch
    opt = make_optimizer(m, 1e-2)
    first = loss.item()
    for _ in range(30):
        opt.zero_grad()
        loss = loss_of(m, data)
        loss.backward()
        opt.step()
    assert loss.item() < first


def test_each_model_reads_only_what_it_needs():
    for name, spaces in {"din": [], "din_codes": ["text"], "mcca": ["audio", "joint", "text"],
                         "mcca_wo_msc": ["joint"], "mcca_wo_mjc": ["audio", "text"], "qarm": ["qarm_rq", "qarm_vq"]}.items():
        m = model(name)
        assert sorted(m.spaces) == spaces, name
    for name in list(BUILT_IN):
        m = model(name).eval()
        full = batch()
        reduced = {k: v for k, v in full.items() if k in m.inputs}
        assert torch.equal(m.logits(full), m.logits(reduced)), name  # nothing outside `inputs` is read
        uses_content = "content_idx" in m.inputs
        assert uses_content == (name in ("qarm", "vbpr", "simtier_make")), name


def test_ablations_remove_what_they_name():
    mcca, wo_msc, wo_mjc = model("mcca"), model("mcca_wo_msc"), model("mcca_wo_mjc")
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
    a = batch()
    b = {k: v.clone() for k, v in a.items()}
    # change what sits in padded history positions (beyond hist_len) only
    b["hist_item_idx"][0] = 7
    b["hist_joint_codes"][3, 3 * L:] = 5
    b["hist_content_idx"][0] = 3
    for name in list(BUILT_IN):
        m = model(name).eval()
        assert torch.allclose(m.logits(a), m.logits(b)), name


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown model 'vbpr2'"):
        build_model(ModelArgs("vbpr2", V, K, L, N, D))


@pytest.mark.parametrize("name", ["vbpr", "qarm", "simtier_make"])
def test_content_models_need_content(name):
    with pytest.raises(ValueError, match="samples.content.dim"):
        build_model(ModelArgs(name, V, K, L, N, D))


@pytest.mark.parametrize("name", ["vbpr", "qarm", "simtier_make"])
def test_content_reaches_cold_items(name):
    """Two targets with the same (out-of-vocabulary) item index but different content must
    score differently: the content, not the ID, tells cold items apart."""
    m = model(name).eval()
    data = batch()
    data["item_idx"][:] = 1  # all OOV
    a = m.logits(data)
    data["content_idx"] = data["content_idx"] % C + 1
    assert not torch.allclose(a, m.logits(data))


def test_qarm_codes_are_the_content_codes():
    m = model("qarm")
    feats = content()
    assert torch.equal(m.codes_qarm_rq, torch.from_numpy(feats.codes["qarm_rq"]).long())
    assert m.semantic["qarm_vq"].layers == 1 and m.semantic["qarm_rq"].layers == 2
    assert not any(k.startswith("codes_") for k in m.state_dict())  # frozen, not checkpointed
    without = content()
    without.codes = {}  # samples built for another model (samples.qarm.codes unset, train.model mcca)
    with pytest.raises(ValueError, match="needs the content codes 'qarm_rq': build the samples with .*samples.qarm.codes=true"):
        build_model(ModelArgs("qarm", V, K, L, N, D), without)


def test_simtier_histograms_count_the_history():
    m = model("simtier_make", tiers=4)
    data = batch()
    from psrq.models.layers import history_mask

    h = m.simtier(data, history_mask(data["hist_len"], N))
    assert h.shape == (B, 2 * 4)
    # per modality, the tier counts add up to the history length (over N)
    assert torch.allclose(h[:, :4].sum(1) * N, data["hist_len"].float())
    # identical target and history content land in the top tier
    data["hist_content_idx"] = data["content_idx"][:, None].expand(B, N) * (torch.arange(N)[None] < data["hist_len"][:, None])
    h = m.simtier(data, history_mask(data["hist_len"], N))
    assert torch.allclose(h[:, 3] * N, data["hist_len"].float())


def test_make_keeps_the_ranking_loss_out_of_the_multimodal_part():
    m = model("simtier_make")
    data = batch()
    torch.nn.functional.binary_cross_entropy_with_logits(m.logits(data), data["label"]).backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in m.multimodal_parameters())
    m.zero_grad()
    loss_of(m, data).backward()  # the auxiliary loss trains it
    assert all(p.grad.abs().sum() > 0 for p in m.multimodal_parameters())
    groups = m.param_groups(1e-3)
    assert groups[1]["lr"] == pytest.approx(4e-3)
    joint = model("simtier_make", make=False)
    assert set(m(data)) == {"logits", "make"} and set(joint(data)) == {"logits"}  # outputs, no module state
    assert joint.losses(data, joint(data)) == {} and joint.param_groups(1e-3)[1]["lr"] == pytest.approx(1e-3)


def test_registries_check_what_they_are_given():
    """One Registry for quantizers and rankers: a class of the wrong base is refused, a
    registered plugin resolves by name and by its import path, built-ins cannot be removed."""
    from psrq.models import registry
    from psrq.quant import registry as quantizers
    from psrq.quant.residual import PSRQ

    import toy_ranker

    with pytest.raises(TypeError, match="not a psrq.models.base.Ranker subclass"):
        registry.register("psrq_as_ranker", PSRQ)
    with pytest.raises(TypeError, match="not a psrq.quant.base.Quantizer subclass"):
        quantizers.register("ranker_as_quantizer", toy_ranker.ItemDot)
    registry.register("item_dot", toy_ranker.ItemDot)
    try:
        registry.register("item_dot", toy_ranker.ItemDot)  # the same class again: nothing changes
        with pytest.raises(ValueError, match="'mcca' is already psrq.models.mcca:CodeAttention"):
            registry.register("mcca", toy_ranker.ItemDot)  # runs are identified by name: no second meaning
        assert registry.ranker_path("item_dot") == "toy_ranker:ItemDot" and registry.ranker_class("item_dot") is toy_ranker.ItemDot
        assert registry.RANKERS.load("toy_ranker:ItemDot") is toy_ranker.ItemDot
    finally:
        registry.unregister("item_dot")
    assert "item_dot" not in registry.names()
    with pytest.raises(ValueError, match="built in"):
        registry.unregister("mcca")
    with pytest.raises(TypeError, match="not a psrq.models.base.Ranker subclass"):
        registry.RANKERS.load("psrq.quant.residual:PSRQ")


def test_the_diagnosis_options_of_mcca_do_what_they_name():
    """VBPR's differences from MCCA as MCCA's options (psrq.models.mcca): each changes only
    what it names; all off is the paper's model, weight for weight."""
    from psrq.models.layers import masked_mean
    from psrq.models.registry import needs_content
    from psrq.samples.layout import OOV

    data = batch()
    paper = model("mcca").eval()
    # user_factor: the same weights, plus the history's mean ID embedding · the target's
    uf = model("mcca", user_factor=True).eval()
    uf.load_state_dict(paper.state_dict())
    mask = torch.arange(N)[None] < data["hist_len"][:, None]
    dot = (masked_mean(paper.item(data["hist_item_idx"]), mask) * paper.item(data["item_idx"])).sum(-1)
    assert torch.allclose(uf.logits(data), paper.logits(data) + dot, atol=1e-6)
    # history_window: only the last n events count (positions are oldest first)
    last = model("mcca", history_window=1).eval()
    last.load_state_dict(paper.state_dict())
    only = {k: v.clone() for k, v in data.items()}
    lens = data["hist_len"]
    only["hist_len"] = lens.clamp(max=1)
    for col, width in (("hist_item_idx", 1), *((f"hist_{s}_codes", L) for s in ("text", "audio", "joint"))):
        rows = data[col].view(B, N, width)
        picked = rows[torch.arange(B), (lens - 1).clamp(min=0)]  # each row's newest event
        only[col] = torch.cat([picked[:, None], torch.zeros(B, N - 1, width, dtype=rows.dtype)], 1).view(B, N * width)
    assert torch.allclose(last.logits(data), paper.logits(only), atol=1e-6)
    # cold_ids=zero: an out-of-vocabulary target's score ignores the never-trained OOV row
    zero = model("mcca", cold_ids="zero").eval()
    cold = {**data, "item_idx": torch.full((B,), OOV)}
    trained = model("mcca").eval()
    before, before_trained = zero.logits(cold), trained.logits(cold)
    with torch.no_grad():
        zero.item.weight[OOV] += 1.0
        trained.item.weight[OOV] += 1.0
    assert torch.allclose(before, zero.logits(cold)) and not torch.allclose(before_trained, trained.logits(cold))
    # target_content: reads the content, so two cold targets with other content score apart
    tc = model("mcca", target_content=True).eval()
    assert needs_content("mcca", {"target_content": True}) and not needs_content("mcca")
    assert "content_idx" in tc.inputs and "content_idx" not in paper.inputs
    moved = {**cold, "content_idx": cold["content_idx"] % C + 1}
    assert not torch.allclose(tc.logits(cold), tc.logits(moved)) and torch.allclose(paper.logits(cold), paper.logits(moved))
    with pytest.raises(ValueError, match="samples.content.dim"):
        build_model(ModelArgs("mcca", V, K, L, N, D, options={"target_content": True}))
    with pytest.raises(ValueError, match="history_window: 1..5"):
        model("mcca", history_window=9)
