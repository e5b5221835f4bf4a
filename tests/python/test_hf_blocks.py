# test_hf_blocks.py — hybridmoe.replace_hf_moe_blocks on models built from re-implemented Hugging
# Face sparse-MoE blocks (hf_modules.py) of the five families, in transformers v4's per-expert form
# and v5's fused form: the swapped model computes what the HF model computed (output, router
# logits, the input's gradient and every parameter's gradient mapped to the HF tensor it came from,
# float64, 1e-12), has the HF state dict (names, shapes, values), and loads an HF state dict; options
# hybridmoe cannot express are refused by name.
import copy

import pytest
import torch

import hf_modules
import hybridmoe

TOL = dict(rtol=1e-12, atol=1e-12)
FAMILIES = sorted(hf_modules.BLOCKS)


def build(family, fused, seed=0, **overrides):
    torch.manual_seed(seed)
    return hf_modules.Model(family, fused, **overrides).double()


def run(model, x, g):
    x = x.clone().requires_grad_()
    y, logits = model(x)
    loss = (y * g).sum()
    for lg in logits:
        if lg is not None:  # the router logits feed HF's balance loss: check their gradient too
            loss = loss + lg.square().sum() * 0.1
    loss.backward()
    return y.detach(), [lg.detach() if lg is not None else None for lg in logits], x.grad


def hf_gradients(block):
    """The gradients of an HFMoEBlock's parameters by the HF tensor names they belong to, mapped
    here independently of the library: w1[e] = gate^T, w3[e] = up^T, w2[e] = down^T."""
    p = {k: v.grad for k, v in block.named_parameters()}
    fam = block.family
    out = {"gate.weight": p["gate.weight"]}
    if block.layout == "fused":
        out["experts.gate_up_proj"] = torch.cat([p["experts.w1"], p["experts.w3"]], 2) \
            .transpose(1, 2)
        out["experts.down_proj"] = p["experts.w2"].transpose(1, 2)
    else:
        names = ("w1", "w3", "w2") if fam == "mixtral" else ("gate_proj", "up_proj", "down_proj")
        for e in range(p["experts.w1"].shape[0]):
            for ours, theirs in zip(("w1", "w3", "w2"), names):
                out[f"experts.{e}.{theirs}.weight"] = p[f"experts.{ours}"][e].t()
    shared = {"qwen2_moe": "shared_expert", "deepseek_v3": "shared_experts"}.get(fam)
    if shared:
        for ours, theirs in zip(("w1", "w3", "w2"), ("gate_proj", "up_proj", "down_proj")):
            out[f"{shared}.{theirs}.weight"] = p[f"shared_expert.{ours}"][0].t()
    if fam == "qwen2_moe":
        out["shared_expert_gate.weight"] = p["shared_expert_gate"]
    return out


@pytest.mark.parametrize("fused", [False, True], ids=["per_expert", "fused"])
@pytest.mark.parametrize("family", FAMILIES)
def test_equals_the_hf_block(family, fused):
    hf = build(family, fused)
    ours = copy.deepcopy(hf)
    names = hybridmoe.replace_hf_moe_blocks(ours)
    attr = hf.layers[0].attribute
    assert names == [f"layers.0.{attr}", f"layers.1.{attr}"]
    blocks = [getattr(layer, attr) for layer in ours.layers]
    assert all(isinstance(b, hybridmoe.HFMoEBlock) and isinstance(b, hybridmoe.MoE)
               for b in blocks)
    torch.manual_seed(1)
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    g = torch.randn(2, 5, 8, dtype=torch.float64)
    y_hf, logits_hf, gx_hf = run(hf, x, g)
    y, logits, gx = run(ours, x, g)
    torch.testing.assert_close(y, y_hf, **TOL)
    torch.testing.assert_close(gx, gx_hf, **TOL)
    for a, b in zip(logits, logits_hf):  # v4's (output, router_logits) where HF returns it
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, **TOL)
    for layer_hf, block in zip(hf.layers, blocks):
        hf_block = getattr(layer_hf, attr)
        want = {k: v.grad for k, v in hf_block.named_parameters()}
        got = hf_gradients(block)
        assert sorted(got) == sorted(want)
        for k in want:
            torch.testing.assert_close(got[k], want[k], **TOL, msg=k)


@pytest.mark.parametrize("fused", [False, True], ids=["per_expert", "fused"])
@pytest.mark.parametrize("family", FAMILIES)
def test_state_dict_is_the_hf_one(family, fused):
    hf = build(family, fused)
    ours = copy.deepcopy(hf)
    hybridmoe.replace_hf_moe_blocks(ours)
    want, got = hf.state_dict(), ours.state_dict()
    assert list(got) == list(want) or sorted(got) == sorted(want)
    for k in want:
        assert got[k].shape == want[k].shape and torch.equal(got[k], want[k]), k
    # Another HF model's state dict loads unchanged, and the swapped model then computes it.
    other = build(family, fused, seed=5)
    ours.load_state_dict(other.state_dict())
    x = torch.randn(3, 4, 8, dtype=torch.float64)
    torch.testing.assert_close(ours(x)[0], other(x)[0], **TOL)
    # Missing, misshapen and extra tensors: load_state_dict's own errors, under the HF names.
    bad = other.state_dict()
    key = next(k for k in bad if "experts" in k and "shared" not in k)
    bad[key] = bad[key][..., :-1]
    bad["layers.1.mlp.extra.weight"] = torch.zeros(1)
    gate = next(k for k in bad if k.endswith("gate.weight") and "shared" not in k)
    del bad[gate]
    with pytest.raises(RuntimeError) as info:
        ours.load_state_dict(bad)
    msg = str(info.value)
    assert f"size mismatch for {key}: got {list(bad[key].shape)}" in msg
    assert f'Missing key(s) in state_dict: "{gate}"' in msg
    assert '"layers.1.mlp.extra.weight"' in msg


def test_config_from_arguments_and_options():
    hf = build("qwen3_moe", False)
    ours = copy.deepcopy(hf)
    del ours.config
    # Without model.config the values come from config= (and the block's own attributes).
    hybridmoe.replace_hf_moe_blocks(ours, config={"norm_topk_prob": False}, aux_loss_coef=0.1,
                                    return_router_logits=False, z_loss_coef=0.01)
    block = ours.layers[0].mlp
    assert block.options["normalize_top_k_weights"] is False and block.options["top_k"] == 2
    x = torch.randn(2, 3, 8, dtype=torch.float64)
    y, logits = ours(x)
    assert logits == [None, None]
    aux = hybridmoe.aux_loss(ours)
    assert float(aux) > 0 and aux.requires_grad
    assert block.last_stats["tokens_per_expert"].sum() == 2 * 3 * 2


def raised(fn):
    with pytest.raises(ValueError) as info:
        fn()
    return str(info.value)


def test_refusals_name_the_option():
    def replace(family, fused=False, **overrides):
        return lambda: hybridmoe.replace_hf_moe_blocks(build(family, fused, **overrides))

    assert raised(replace("mixtral", hidden_act="gelu")) == (
        "replace_hf_moe_blocks: layers.0.block_sparse_moe (MixtralSparseMoeBlock): hidden_act "
        "'gelu' cannot be expressed (hybridmoe's swiglu gates with silu)")
    assert "router_jitter_noise=0.01 cannot be expressed" in raised(
        replace("mixtral", router_jitter_noise=0.01))
    assert "scoring_func 'softmax' cannot be expressed" in raised(
        replace("deepseek_v3", scoring_func="softmax"))
    assert "topk_method 'greedy' cannot be expressed" in raised(
        replace("deepseek_v3", topk_method="greedy"))
    biased = build("olmoe", False)
    biased.layers[1].mlp.gate = torch.nn.Linear(8, 4, bias=True).double()
    assert raised(lambda: hybridmoe.replace_hf_moe_blocks(biased)) == (
        "replace_hf_moe_blocks: layers.1.mlp (OlmoeSparseMoeBlock): gate has a bias, which the "
        "gate of this family has not")
    no_norm = build("qwen3_moe", False)
    del no_norm.config.norm_topk_prob
    for layer in no_norm.layers:  # v4's blocks keep it too
        del layer.mlp.norm_topk_prob
    assert "needs norm_topk_prob (from the model's config" in raised(
        lambda: hybridmoe.replace_hf_moe_blocks(no_norm))
    assert "top_k follow from the block and its config" in raised(
        lambda: hybridmoe.replace_hf_moe_blocks(build("olmoe", False), top_k=1))
    assert "has no Hugging Face sparse-MoE block" in raised(
        lambda: hybridmoe.replace_hf_moe_blocks(torch.nn.Linear(2, 2)))


@pytest.mark.parametrize("family", ["deepseek_v3", "qwen2_moe"])
def test_float32_model(family):
    # The model's dtype is kept; in float32 the router runs in float32, as HF's does.
    torch.manual_seed(0)
    hf = hf_modules.Model(family, False)
    ours = copy.deepcopy(hf)
    hybridmoe.replace_hf_moe_blocks(ours)
    assert ours.layers[0].mlp.experts.w1.dtype == torch.float32
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(ours(x)[0], hf(x)[0], rtol=1e-5, atol=1e-5)
