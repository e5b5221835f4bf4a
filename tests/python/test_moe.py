# test_moe.py — hybridmoe.MoE, the C++ MoE layer as a torch.nn.Module whose weights are Python
# nn.Parameters (bound into the C++ layer by moe_forward at each call): equal to a C++ MoE that
# owns its own tensors (output, aux loss, every gradient, float64, 1e-12), gradcheck in float64,
# state_dict round trip, .to(dtype), optimizer steps, errors with the C++ message, and one expert
# with top-1 equal to a dense MLP in plain torch.
import pytest
import torch
import torch.nn.functional as F

import hybridmoe

TOL = dict(rtol=1e-12, atol=1e-12)

# Layers covering the experts' activations and biases, capacity with drops, the losses, a
# shared expert with its gate, and the gates with parameters or buffers of their own.
CASES = {
    "swiglu_dropless": dict(d_model=8, num_experts=4, top_k=2, d_hidden=6),
    "gelu_capacity": dict(d_model=8, num_experts=4, top_k=2, d_hidden=5, activation="gelu",
                          capacity_factor=0.75, z_loss_coef=1e-2, aux_loss_coef=0.1),
    "relu_nobias_shared": dict(d_model=6, num_experts=3, top_k=1, d_hidden=4, activation="relu",
                               bias=False, shared_expert_hidden=5, shared_expert_gate=True),
    "normalized_sigmoid": dict(d_model=8, num_experts=4, top_k=2, d_hidden=4,
                               normalize_top_k_weights=True, score_function="sigmoid"),
    "cosine": dict(d_model=8, num_experts=4, top_k=2, d_hidden=4, gate="cosine",
                   cosine_projection_dim=5),
}


def layer(case, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return hybridmoe.MoE(**CASES[case]).to(dtype)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("shape", [(10,), (2, 5)])
def test_equals_the_cpp_layer(case, shape):
    moe = layer(case)
    torch.manual_seed(1)
    x = torch.randn(*shape, moe.options["d_model"], dtype=torch.float64)
    g = torch.randn(*shape, moe.options["d_model"], dtype=torch.float64)
    x_py = x.clone().requires_grad_()
    out, aux, stats = moe(x_py)
    ((out * g).sum() + aux).backward()
    state = {k: v.detach().clone() for k, v in moe.state_dict().items()}
    ref_out, ref_aux, ref_stats, ref_grads = hybridmoe._C._reference_moe(moe.options, state, x, g)
    assert out.shape == x.shape and out.dtype == torch.float64
    torch.testing.assert_close(out, ref_out, **TOL)
    torch.testing.assert_close(aux, ref_aux, **TOL)
    names = dict(moe.named_parameters())
    assert sorted(names) == sorted(ref_grads)
    for name, p in names.items():
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, ref_grads[name], **TOL, msg=name)
    assert torch.equal(stats["tokens_per_expert"], ref_stats["tokens_per_expert"])
    for key in ("dropped", "capacity", "loss_terms"):
        assert stats[key] == ref_stats[key], key
    assert stats["router_entropy"] == pytest.approx(ref_stats["router_entropy"], rel=1e-12)


def test_names_and_shapes_are_the_cpp_layers():
    moe = layer("swiglu_dropless", torch.float32)
    params = dict(moe.named_parameters())
    assert set(params) == {"gate.weight", "experts.w1", "experts.b1", "experts.w2", "experts.b2",
                           "experts.w3", "experts.b3"}
    assert params["experts.w1"].shape == (4, 8, 6) and params["gate.weight"].shape == (4, 8)
    assert all(isinstance(p, torch.nn.Parameter) for p in params.values())
    assert set(dict(moe.named_buffers())) == {"gate.expert_bias", "gate.step_load"}
    # The C++ init, seeded by torch's global generator.
    again = layer("swiglu_dropless", torch.float32)
    for k, v in again.state_dict().items():
        assert torch.equal(v, moe.state_dict()[k]), k


def test_gradcheck_float64():
    moe = layer("swiglu_dropless")
    names = [n for n, _ in moe.named_parameters()]
    buffers = dict(moe.named_buffers())
    torch.manual_seed(2)
    x = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    params = [p.detach().clone().requires_grad_() for p in moe.parameters()]

    def f(x, *ps):
        tensors = dict(zip(names, ps))
        tensors.update(buffers)
        out, aux, _ = moe.forward_with(tensors, x)
        return out, aux

    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-7)


def test_state_dict_round_trip_and_to_dtype():
    a = layer("gelu_capacity", seed=3)
    b = layer("gelu_capacity", seed=4)
    assert not torch.equal(a.state_dict()["experts.w1"], b.state_dict()["experts.w1"])
    b.load_state_dict(a.state_dict())
    x = torch.randn(7, 8, dtype=torch.float64)
    out_a, aux_a, _ = a(x)
    out_b, aux_b, _ = b(x)
    assert torch.equal(out_a, out_b) and torch.equal(aux_a, aux_b)
    c = b.to(torch.float32)
    assert c.experts.w1.dtype == torch.float32
    out_c, _, _ = c(x.float())
    assert out_c.dtype == torch.float32
    torch.testing.assert_close(out_c.double(), out_a, rtol=1e-4, atol=1e-5)


def test_optimizer_and_requires_grad():
    moe = layer("swiglu_dropless")
    opt = torch.optim.SGD(moe.parameters(), lr=0.1)
    x = torch.randn(6, 8, dtype=torch.float64)
    before = moe.experts.w1.detach().clone()
    out, aux, _ = moe(x)
    (out.square().mean() + aux).backward()
    opt.step()
    assert not torch.equal(before, moe.experts.w1)
    # The step reaches the C++ layer: the next forward uses the updated Parameter.
    after, _, _ = moe(x)
    assert not torch.equal(after, out)
    moe.zero_grad(set_to_none=True)
    moe.gate.requires_grad_(False)
    out, aux, _ = moe(x)
    (out.sum() + aux).backward()
    assert moe.gate.weight.grad is None and moe.experts.w1.grad is not None


def test_bad_arguments_raise_the_cpp_message():
    def raised(fn):
        with pytest.raises(hybridmoe.Error) as info:
            fn()
        return str(info.value)

    assert raised(lambda: hybridmoe.MoE(0, 4)) == "MoE: d_model must be positive, got 0"
    assert raised(lambda: hybridmoe.MoE(8, 4, activation="tanh")) == (
        'activation: expected one of gelu, relu, swiglu; got "tanh"')
    assert 'unknown option "colour"' in raised(lambda: hybridmoe.MoE(8, 4, colour=1))
    # a2a_algorithm: its names, and one process has no exchange to route between nodes.
    assert 'a2a_algorithm: expected one of "flat", "hierarchical", got "tree"' in raised(
        lambda: hybridmoe.MoE(8, 4, a2a_algorithm="tree"))
    assert ("a2a_algorithm=hierarchical routes the expert-parallel all-to-all between nodes, "
            "which a single-process layer does not have") in raised(
        lambda: hybridmoe.MoE(8, 4, a2a_algorithm="hierarchical"))
    hybridmoe.MoE(8, 4, a2a_algorithm="flat")
    moe = hybridmoe.MoE(8, 4, d_hidden=4)
    assert raised(lambda: moe(torch.randn(3, 7))) == (
        "MoE: input width must be d_model=8, got 7 (shape [3, 7])")


def test_one_expert_top1_is_a_dense_mlp():
    for activation in ("swiglu", "gelu", "relu"):
        torch.manual_seed(5)
        moe = hybridmoe.MoE(8, 1, top_k=1, d_hidden=6, activation=activation).double()
        x = torch.randn(2, 3, 8, dtype=torch.float64)
        out, _, stats = moe(x)
        w = {k: v.detach()[0] for k, v in moe.experts.named_parameters()}
        h = x @ w["w1"] + w["b1"]
        if activation == "swiglu":
            h = F.silu(h) * (x @ w["w3"] + w["b3"])
        elif activation == "gelu":
            h = F.gelu(h)
        else:
            h = F.relu(h)
        dense = h @ w["w2"] + w["b2"]
        torch.testing.assert_close(out, dense, rtol=1e-12, atol=1e-12)
        assert stats["tokens_per_expert"].tolist() == [6]


def test_two_threads_calling_one_module_get_their_own_weights():
    # forward_with binds the given tensors and runs the layer as one step: threads calling the
    # same module with different weights each get what a serial call with theirs computes.
    import threading

    torch.manual_seed(5)
    moe = hybridmoe.MoE(8, 4, top_k=2, d_hidden=16).double()
    base = dict(list(moe.named_parameters()) + list(moe.named_buffers()))
    weights = [{k: (v.detach() * (1 + 0.1 * i)).requires_grad_(v.requires_grad)
                for k, v in base.items()} for i in range(4)]
    x = torch.randn(64, 8, dtype=torch.float64)
    expected = [moe.forward_with(w, x)[0].detach() for w in weights]
    got = [[] for _ in weights]

    def run(i):
        for _ in range(25):
            got[i].append(moe.forward_with(weights[i], x)[0].detach())

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(weights))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, outs in enumerate(got):
        assert len(outs) == 25
        for out in outs:
            assert torch.equal(out, expected[i]), i
