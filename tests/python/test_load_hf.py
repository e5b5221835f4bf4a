# test_load_hf.py — hybridmoe.load_hf reads a Hugging Face checkpoint directory written here (with
# hybridmoe's safetensors writer; one model.safetensors, or shards named by
# model.safetensors.index.json; per-expert and fused expert layouts) as the state dict of a model
# with replaced MoE blocks: equal to the HF model's own state dict, loadable with strict
# load_state_dict so that the model computes the HF model's output; a layer holding some experts
# and a slice of the hidden width gets exactly those pieces; missing, extra and misshapen tensors
# are errors naming them.
import json

import pytest
import torch

import hf_modules
import hybridmoe

TOL = dict(rtol=1e-12, atol=1e-12)
FAMILIES = sorted(hf_modules.BLOCKS)

CausalLM, write = hf_modules.CausalLM, hf_modules.write_checkpoint


@pytest.mark.parametrize("shards", [1, 3], ids=["single", "sharded"])
@pytest.mark.parametrize("fused", [False, True], ids=["per_expert", "fused"])
@pytest.mark.parametrize("family", FAMILIES)
def test_loads_the_hf_state(tmp_path, family, fused, shards):
    hf = CausalLM(family, fused, seed=1)
    d = write(tmp_path / "ckpt", family, hf.state_dict(), shards)
    # Without a model: the whole checkpoint, one process's share being all of it.
    state = hybridmoe.load_hf(d)
    want = hf.state_dict()
    assert sorted(state) == sorted(want)
    for k in want:
        assert torch.equal(state[k], want[k]), k
    # Into a model with replaced blocks (initialised otherwise): strict load, the HF function.
    ours = CausalLM(family, fused, seed=2)
    hybridmoe.replace_hf_moe_blocks(ours)
    ours.load_state_dict(hybridmoe.load_hf(d, model=ours))
    x = torch.randn(2, 3, 8, dtype=torch.float64)
    torch.testing.assert_close(ours(x), hf(x), **TOL)


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe", "deepseek_v3"])
def test_converts_between_expert_layouts(tmp_path, family):
    # A fused (v5) checkpoint into a model of v4's per-expert blocks, and the reverse.
    for ckpt_fused in (True, False):
        hf = CausalLM(family, ckpt_fused, seed=3)
        d = write(tmp_path / f"ckpt{ckpt_fused}", family, hf.state_dict())
        ours = CausalLM(family, not ckpt_fused, seed=4)
        hybridmoe.replace_hf_moe_blocks(ours)
        ours.load_state_dict(hybridmoe.load_hf(d, model=ours))
        x = torch.randn(5, 8, dtype=torch.float64).unsqueeze(0)
        torch.testing.assert_close(ours(x), hf(x), **TOL)


class _Share:
    """Pretends a block holds the experts `local` and the hidden slice `hidden` (what a
    distributed layer reports through MoE.local_experts / MoE.hidden_range)."""

    def __init__(self, block, local, hidden):
        cls = type(block)
        block.__class__ = type("Shard", (cls,), {"local_experts": property(lambda s: local),
                                                 "hidden_range": property(lambda s: hidden)})


@pytest.mark.parametrize("fused", [False, True], ids=["per_expert", "fused"])
def test_a_share_is_its_experts_and_hidden_slice(tmp_path, fused):
    hf = CausalLM("qwen2_moe", fused, seed=5)
    d = write(tmp_path / "ckpt", "qwen2_moe", hf.state_dict(), shards=2)
    ours = CausalLM("qwen2_moe", fused, seed=6)
    hybridmoe.replace_hf_moe_blocks(ours)
    local, (start, length) = [1, 3], (2, 2)
    for layer in ours.model.layers:
        _Share(layer.mlp, local, (start, length))
    state = hybridmoe.load_hf(d, model=ours)
    full = hf.state_dict()
    for i in range(2):
        p = f"model.layers.{i}.mlp."
        mine = {k[len(p):]: v for k, v in state.items() if k.startswith(p)}
        rows = slice(start, start + length)
        if fused:
            gu, dn = full[p + "experts.gate_up_proj"], full[p + "experts.down_proj"]
            h = gu.shape[1] // 2
            assert torch.equal(mine["experts.gate_up_proj"], torch.cat(
                [gu[local][:, start:start + length], gu[local][:, h + start:h + start + length]],
                1))
            assert torch.equal(mine["experts.down_proj"], dn[local][:, :, rows])
        else:
            experts = sorted({k.split(".")[1] for k in mine if k.startswith("experts.")})
            assert experts == ["1", "3"]
            for e in local:
                for n in ("gate_proj", "up_proj"):
                    k = f"experts.{e}.{n}.weight"
                    assert torch.equal(mine[k], full[p + k][rows]), k
                k = f"experts.{e}.down_proj.weight"
                assert torch.equal(mine[k], full[p + k][:, rows]), k
        # The router and the shared expert are whole on every rank.
        for k in ("gate.weight", "shared_expert.gate_proj.weight", "shared_expert_gate.weight"):
            assert torch.equal(mine[k], full[p + k]), k


def error(fn):
    with pytest.raises(ValueError) as info:
        fn()
    return str(info.value)


def test_missing_extra_and_misshapen_tensors_are_named(tmp_path):
    hf = CausalLM("mixtral", False)
    good = hf.state_dict()
    p = "model.layers.1.block_sparse_moe."
    bad = dict(good)
    del bad[p + "experts.2.w3.weight"]
    bad[p + "experts.4.w1.weight"] = torch.zeros(6, 8, dtype=torch.float64)
    bad[p + "experts.0.w2.weight"] = torch.zeros(8, 5, dtype=torch.float64)
    msg = error(lambda: hybridmoe.load_hf(write(tmp_path / "a", "mixtral", bad)))
    assert f"{p}experts.4.w1.weight is not a tensor of a mixtral per-expert MoE block with 4 " \
           "experts" in msg
    assert f"{p}experts.2.w3.weight is missing" in msg
    assert f"{p}experts.0.w2.weight has shape [8, 5], expected [8, 6]" in msg
    # A fused checkpoint with a wrong inner size.
    hf5 = CausalLM("olmoe", True)
    bad = hf5.state_dict()
    k = "model.layers.0.mlp.experts.gate_up_proj"
    bad[k] = bad[k][:, :-1]
    assert f"{k} has shape [4, 7, 8], expected [4, 8, 8]" in error(
        lambda: hybridmoe.load_hf(write(tmp_path / "b", "olmoe", bad)))
    # With a model: tensors it lacks (unless allowed), tensors it has that are missing, shapes.
    ours = CausalLM("mixtral", False)
    hybridmoe.replace_hf_moe_blocks(ours)
    extra = dict(good, **{"model.layers.2.mlp.gate.weight": torch.zeros(4, 8)})
    d = write(tmp_path / "c", "mixtral", extra)
    assert "model.layers.2.mlp.gate.weight is not a tensor of the model (allow_unused= to skip " \
           "it)" in error(lambda: hybridmoe.load_hf(d, model=ours))
    state = hybridmoe.load_hf(d, model=ours, allow_unused=r"model\.layers\.2\..*")
    ours.load_state_dict(state)
    lacking = {k: v for k, v in good.items() if k != "lm_head.weight"}
    assert "lm_head.weight is missing (the model has it)" in error(
        lambda: hybridmoe.load_hf(write(tmp_path / "d", "mixtral", lacking), model=ours))
    wide = dict(good, **{"model.embed_tokens.weight": torch.zeros(16, 9)})
    assert "model.embed_tokens.weight has shape [16, 9], the model expects [16, 8]" in error(
        lambda: hybridmoe.load_hf(write(tmp_path / "e", "mixtral", wide), model=ours))
    plain = CausalLM("mixtral", False)
    assert "no replaced MoE block at model.layers.0.block_sparse_moe" in error(
        lambda: hybridmoe.load_hf(write(tmp_path / "f", "mixtral", good), model=plain))
    # A model whose shared expert is narrower than the checkpoint's.
    narrow = CausalLM("qwen2_moe", False, shared_expert_intermediate_size=6)
    hybridmoe.replace_hf_moe_blocks(narrow)
    qwen = CausalLM("qwen2_moe", False).state_dict()
    assert "model.layers.0.mlp: the model's block has a shared expert of width 6; the " \
           "checkpoint 7" in error(
               lambda: hybridmoe.load_hf(write(tmp_path / "h", "qwen2_moe", qwen), model=narrow))


def test_reader_errors_arrive_with_the_cpp_message(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(dict(
        model_type="olmoe", hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        vocab_size=16, intermediate_size=4, num_experts=4)))
    with pytest.raises(hybridmoe.Error, match="model.safetensors"):
        hybridmoe.load_hf(tmp_path)
    ckpt = hybridmoe._C._Checkpoint(str(write(tmp_path / "g", "olmoe",
                                              {"a": torch.arange(6.).view(2, 3)})))
    assert ckpt.names() == ["a"] and "a" in ckpt and "b" not in ckpt
    assert ckpt.info("a") == (torch.float32, [2, 3])
    assert torch.equal(ckpt.get("a"), torch.arange(6.).view(2, 3))
