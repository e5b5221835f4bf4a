# test_moefy.py — hybridmoe.moefy replaces a model's dense MLPs with MoE layers: with one expert
# and top-1, and with upcycled equal experts under normalized top-2 for any expert count, the
# model computes what the dense model computed (output and every gradient, float64, 1e-12: an
# expert's gradients summed over the experts are the dense Linear's, the gate's are zero); each
# recognised MLP shape; hybridmoe.aux_loss collects the layers' losses; refusals name the module.
import copy

import pytest
import torch

import hybridmoe

TOL = dict(rtol=1e-12, atol=1e-12)
D, H = 8, 12


class FcMLP(torch.nn.Module):
    def __init__(self, act):
        super().__init__()
        self.fc1, self.fc2, self.act = torch.nn.Linear(D, H), torch.nn.Linear(H, D), act

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class LlamaMLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.gate_proj = torch.nn.Linear(D, H, bias=False)
        self.up_proj = torch.nn.Linear(D, H, bias=False)
        self.down_proj = torch.nn.Linear(H, D, bias=False)
        self.act_fn = torch.nn.SiLU()

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class MixtralMLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w1, self.w3 = torch.nn.Linear(D, H), torch.nn.Linear(D, H, bias=False)
        self.w2 = torch.nn.Linear(H, D)

    def forward(self, x):
        return self.w2(torch.nn.functional.silu(self.w1(x)) * self.w3(x))


MLPS = {
    "sequential_gelu": lambda: torch.nn.Sequential(torch.nn.Linear(D, H), torch.nn.GELU(),
                                                   torch.nn.Linear(H, D)),
    "sequential_relu_nobias": lambda: torch.nn.Sequential(
        torch.nn.Linear(D, H, bias=False), torch.nn.ReLU(), torch.nn.Linear(H, D, bias=False)),
    "fc_gelu": lambda: FcMLP(torch.nn.GELU()),
    "llama_swiglu": LlamaMLP,
    "mixtral_swiglu": MixtralMLP,
}

# Which dense Linear each expert tensor copies: (expert parameter, dense attribute path).
ROLES = {
    "sequential_gelu": [("w1", "0.weight"), ("b1", "0.bias"), ("w2", "2.weight"), ("b2", "2.bias")],
    "sequential_relu_nobias": [("w1", "0.weight"), ("w2", "2.weight")],
    "fc_gelu": [("w1", "fc1.weight"), ("b1", "fc1.bias"), ("w2", "fc2.weight"),
                ("b2", "fc2.bias")],
    "llama_swiglu": [("w1", "gate_proj.weight"), ("w3", "up_proj.weight"),
                     ("w2", "down_proj.weight")],
    "mixtral_swiglu": [("w1", "w1.weight"), ("b1", "w1.bias"), ("w3", "w3.weight"),
                       ("w2", "w2.weight"), ("b2", "w2.bias")],
}


class Block(torch.nn.Module):
    def __init__(self, mlp):
        super().__init__()
        self.norm, self.mlp = torch.nn.LayerNorm(D), mlp

    def forward(self, x):
        return x + self.mlp(self.norm(x))


class Net(torch.nn.Module):
    def __init__(self, kind, layers=2):
        super().__init__()
        self.inp = torch.nn.Linear(D, D)
        self.blocks = torch.nn.ModuleList([Block(MLPS[kind]()) for _ in range(layers)])
        self.out = torch.nn.Linear(D, D)

    def forward(self, x):
        x = self.inp(x)
        for b in self.blocks:
            x = b(x)
        return self.out(x)


def run(model, x, g):
    x = x.clone().requires_grad_()
    y = model(x)
    (y * g).sum().backward()
    return y.detach(), x.grad


@pytest.mark.parametrize("kind", sorted(MLPS))
@pytest.mark.parametrize("experts,top_k", [(1, 1), (4, 2), (3, 3)])
def test_upcycled_model_equals_the_dense_model(kind, experts, top_k):
    torch.manual_seed(0)
    dense = Net(kind).double()
    moe = copy.deepcopy(dense)
    names = hybridmoe.moefy(moe, r"blocks\.\d+\.mlp", num_experts=experts, top_k=top_k,
                            normalize_top_k_weights=top_k > 1)
    assert names == ["blocks.0.mlp", "blocks.1.mlp"]
    torch.manual_seed(1)
    x = torch.randn(3, 5, D, dtype=torch.float64)
    g = torch.randn(3, 5, D, dtype=torch.float64)
    y_dense, gx_dense = run(dense, x, g)
    y_moe, gx_moe = run(moe, x, g)
    assert y_moe.shape == y_dense.shape
    torch.testing.assert_close(y_moe, y_dense, **TOL)
    torch.testing.assert_close(gx_moe, gx_dense, **TOL)
    moe_params = dict(moe.named_parameters())
    for name, p in dense.named_parameters():
        if ".mlp." not in name:
            torch.testing.assert_close(moe_params[name].grad, p.grad, **TOL, msg=name)
    for i, block in enumerate(moe.blocks):
        layer = block.mlp.moe
        assert isinstance(block.mlp, hybridmoe.MoEMLP)
        assert layer.options["activation"] == ("swiglu" if "swiglu" in kind else
                                               "relu" if "relu" in kind else "gelu")
        expert_params = dict(layer.experts.named_parameters())
        roles = dict(ROLES[kind])
        for pname, p in expert_params.items():
            if pname not in roles:  # a bias the MLP lacks (b3, b2 of an fc without one): zero
                assert not p.detach().any(), pname
                continue
            src = dense.blocks[i].mlp.get_parameter(roles[pname])
            want = src.t() if src.dim() == 2 else src
            # Upcycled: every expert a copy; the expert gradients sum to the dense gradient.
            for e in range(experts):
                assert torch.equal(p.detach()[e], want.detach()), (pname, e)
            torch.testing.assert_close(p.grad.sum(0), src.grad.t() if src.dim() == 2
                                       else src.grad, **TOL, msg=pname)
        assert set(roles) <= set(expert_params)
        torch.testing.assert_close(layer.gate.weight.grad,
                                   torch.zeros_like(layer.gate.weight), **TOL)


def test_aux_loss_collects_and_resets():
    torch.manual_seed(2)
    model = Net("fc_gelu", layers=3).double()
    hybridmoe.moefy(model, lambda name, m: name.endswith("mlp"), num_experts=4, top_k=2,
                    aux_loss_coef=0.5)
    x = torch.randn(6, D, dtype=torch.float64)
    assert float(hybridmoe.aux_loss(model)) == 0.0
    model(x)
    layers = [b.mlp for b in model.blocks]
    want = sum(m.last_aux_loss for m in layers)
    assert all(m.last_stats["tokens_per_expert"].sum() == 6 * 2 for m in layers)
    got = hybridmoe.aux_loss(model)
    assert got.requires_grad and float(got) > 0
    torch.testing.assert_close(got, want, **TOL)
    assert all(m.last_aux_loss is None for m in layers)
    assert float(hybridmoe.aux_loss(model)) == 0.0
    # Its gradient reaches the gates.
    model(x)
    hybridmoe.aux_loss(model).backward()
    assert all(m.moe.gate.weight.grad.abs().sum() > 0 for m in layers)


def test_without_upcycling_and_options():
    torch.manual_seed(3)
    model = Net("llama_swiglu").float()
    hybridmoe.moefy(model, r"blocks\.0\.mlp", num_experts=4, upcycle=False, d_hidden=6,
                    capacity_factor=1.0)
    layer = model.blocks[0].mlp.moe
    assert isinstance(model.blocks[1].mlp, LlamaMLP)
    assert layer.experts.w1.shape == (4, D, 6) and layer.experts.w1.dtype == torch.float32
    assert layer.options["capacity_factor"] == 1.0 and layer.options["bias"] is False
    assert model(torch.randn(2, 3, D)).shape == (2, 3, D)
    # The parameters are the model's: an optimizer over model.parameters() trains them.
    assert any(p is layer.experts.w1 for p in model.parameters())


def raised(fn, kind=ValueError):
    with pytest.raises(kind) as info:
        fn()
    return str(info.value)


def test_refusals_name_the_module():
    def make(mlp):
        return Net("fc_gelu") if mlp is None else torch.nn.Sequential(torch.nn.Linear(D, D), mlp)

    tanh = torch.nn.Sequential(torch.nn.Linear(D, H), torch.nn.Tanh(), torch.nn.Linear(H, D))
    msg = raised(lambda: hybridmoe.moefy(make(tanh), "1", num_experts=2))
    assert msg.startswith("moefy: 1 (Sequential) has the activation Tanh()")
    assert "expected nn.Sequential(nn.Linear(d, h)" in msg
    gelu_tanh = torch.nn.Sequential(torch.nn.Linear(D, H), torch.nn.GELU(approximate="tanh"),
                                    torch.nn.Linear(H, D))
    assert "hybridmoe does not have" in raised(
        lambda: hybridmoe.moefy(make(gelu_tanh), "1", num_experts=2))
    assert raised(lambda: hybridmoe.moefy(make(torch.nn.Linear(D, D)), "1", num_experts=2)) \
        .startswith("moefy: 1 (Linear) is not a dense MLP moefy knows; expected")
    no_act = FcMLP(None)
    assert "pass activation=" in raised(lambda: hybridmoe.moefy(make(no_act), "1", num_experts=2))
    # ... and with activation= given, it is taken.
    ok = make(FcMLP(None))
    hybridmoe.moefy(ok, "1", num_experts=2, activation="relu")
    assert ok[1].moe.options["activation"] == "relu"
    assert raised(lambda: hybridmoe.moefy(Net("fc_gelu"), r"nothing", num_experts=2)) == (
        "moefy: no module of Net matches 'nothing'")
    assert "upcycled experts have the MLP's width 12, got d_hidden=6" in raised(
        lambda: hybridmoe.moefy(Net("fc_gelu"), r"blocks\.0\.mlp", num_experts=2, d_hidden=6))
    assert "computes gelu, but activation='relu' was given" in raised(
        lambda: hybridmoe.moefy(Net("fc_gelu"), r"blocks\.0\.mlp", num_experts=2,
                                activation="relu"))
    assert "bias=False was given" in raised(
        lambda: hybridmoe.moefy(Net("fc_gelu"), r"blocks\.0\.mlp", num_experts=2, bias=False))
    assert "match must be a regular expression" in raised(
        lambda: hybridmoe.moefy(Net("fc_gelu"), 3, num_experts=2), TypeError)
    # An error of the C++ layer arrives as hybridmoe.Error with its message.
    with pytest.raises(hybridmoe.Error, match="top_k"):
        hybridmoe.moefy(Net("fc_gelu"), r"blocks\.0\.mlp", num_experts=2, top_k=3)
