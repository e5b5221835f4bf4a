# hf_modules.py — minimal torch re-implementations of the Hugging Face sparse-MoE blocks of the five
# families hybridmoe imports (transformers' modeling_{mixtral,qwen2_moe,qwen3_moe,olmoe,deepseek_v3}
# .py): the classes by HF's names, in transformers v4's form (router nn.Linear or
# DeepseekV3TopkRouter, experts an nn.ModuleList of MLPs; Mixtral/Qwen/OLMoE return
# (output, router_logits)) and v5's (a router module with weight, fused expert tensors
# gate_up_proj [E, 2h, d] and down_proj [E, d, h]; the block returns the output alone). The
# routing is HF's: softmax over the experts, top-k, renormalized for Mixtral and where
# norm_topk_prob; Qwen2-MoE's shared expert scaled by sigmoid(shared_expert_gate(x)); DeepSeek-V3's
# sigmoid scores with e_score_correction_bias for the selection, limited to the topk_group groups
# of best two-score sums (other experts' selection scores set to 0), weights the unbiased scores,
# normalized (+1e-20) if norm_topk_prob, times routed_scaling_factor, plus ungated shared experts.
# One deliberate difference: HF computes the softmax / sigmoid router in float32; here everything
# runs in the input dtype (float64 in the tests), the precision hybridmoe's router uses for float64.
# Also a tiny decoder stack (a residual per block) with `config`, as HF models carry, HF's top level
# around it (CausalLM), and a checkpoint directory writer (config.json and safetensors files, by
# hybridmoe's writer). Sizes can be overridden by HF's config keys (e.g. num_experts=4), in the
# modules and in config.json alike.
import json
import types

import torch
import torch.nn.functional as F
from torch import nn


def config(**kw):
    return types.SimpleNamespace(hidden_act="silu", **kw)


class SwiGLU(nn.Module):  # Qwen2MoeMLP / OlmoeMLP / DeepseekV3MLP
    def __init__(self, d, h):
        super().__init__()
        self.gate_proj = nn.Linear(d, h, bias=False)
        self.up_proj = nn.Linear(d, h, bias=False)
        self.down_proj = nn.Linear(h, d, bias=False)
        self.act_fn = nn.SiLU()

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class MixtralBlockSparseTop2MLP(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.w1 = nn.Linear(d, h, bias=False)
        self.w2 = nn.Linear(h, d, bias=False)
        self.w3 = nn.Linear(d, h, bias=False)
        self.act_fn = nn.SiLU()

    def forward(self, x):
        return self.w2(self.act_fn(self.w1(x)) * self.w3(x))


def combine(x, run_expert, selected, weights, E):
    """HF's expert loop: each expert on its tokens, scaled by the routing weight, index_add_."""
    out = torch.zeros_like(x)
    mask = F.one_hot(selected, num_classes=E).permute(2, 1, 0)
    for e in range(E):
        idx, top_x = torch.where(mask[e])
        out.index_add_(0, top_x, run_expert(e, x[top_x]) * weights[top_x, idx, None])
    return out


def softmax_top_k(logits, k, normalize):
    w = F.softmax(logits, dim=1)
    w, selected = torch.topk(w, k, dim=-1)
    if normalize:
        w = w / w.sum(dim=-1, keepdim=True)
    return w, selected


class FusedExperts(nn.Module):  # v5's <Family>Experts
    def __init__(self, E, d, h):
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.randn(E, 2 * h, d) * 0.3)
        self.down_proj = nn.Parameter(torch.randn(E, d, h) * 0.3)

    def run(self, e, x):
        gate, up = F.linear(x, self.gate_up_proj[e]).chunk(2, dim=-1)
        return F.linear(F.silu(gate) * up, self.down_proj[e])


class TopKRouter(nn.Module):  # v5's <Family>TopKRouter: the weight only
    def __init__(self, E, d):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(E, d) * 0.3)


class SoftmaxBlockBase(nn.Module):
    """Mixtral / Qwen2-MoE / Qwen3-MoE / OLMoE; `fused` picks v5's form."""

    expert_class = SwiGLU
    renormalize = None  # None: config.norm_topk_prob

    def __init__(self, cfg, h, fused):
        super().__init__()
        d, E = cfg.hidden_size, cfg.num_experts_per_block
        self.top_k, self.num_experts, self.fused = cfg.num_experts_per_tok, E, fused
        self.norm_topk_prob = (self.renormalize if self.renormalize is not None
                               else cfg.norm_topk_prob)
        if fused:
            self.gate, self.experts = TopKRouter(E, d), FusedExperts(E, d, h)
        else:
            self.gate = nn.Linear(d, E, bias=False)
            self.experts = nn.ModuleList([self.expert_class(d, h) for _ in range(E)])

    def routed(self, x):
        logits = F.linear(x, self.gate.weight)
        w, selected = softmax_top_k(logits, self.top_k, self.norm_topk_prob)
        run = self.experts.run if self.fused else (lambda e, t: self.experts[e](t))
        return combine(x, run, selected, w, self.num_experts), logits

    def extra(self, x):
        return 0

    def forward(self, hidden_states):
        b, s, d = hidden_states.shape
        x = hidden_states.view(-1, d)
        out, logits = self.routed(x)
        out = (out + self.extra(x)).reshape(b, s, d)
        return out if self.fused else (out, logits)


class MixtralSparseMoeBlock(SoftmaxBlockBase):
    expert_class = MixtralBlockSparseTop2MLP
    renormalize = True

    def __init__(self, cfg, fused=False):
        super().__init__(cfg, cfg.intermediate_size, fused)


class Qwen2MoeSparseMoeBlock(SoftmaxBlockBase):
    def __init__(self, cfg, fused=False):
        super().__init__(cfg, cfg.moe_intermediate_size, fused)
        self.shared_expert = SwiGLU(cfg.hidden_size, cfg.shared_expert_intermediate_size)
        self.shared_expert_gate = nn.Linear(cfg.hidden_size, 1, bias=False)

    def extra(self, x):
        return torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)


class Qwen3MoeSparseMoeBlock(SoftmaxBlockBase):
    def __init__(self, cfg, fused=False):
        super().__init__(cfg, cfg.moe_intermediate_size, fused)


class OlmoeSparseMoeBlock(SoftmaxBlockBase):
    def __init__(self, cfg, fused=False):
        super().__init__(cfg, cfg.intermediate_size, fused)


class DeepseekV3TopkRouter(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.top_k, self.n_routed_experts = cfg.num_experts_per_tok, cfg.n_routed_experts
        self.routed_scaling_factor = cfg.routed_scaling_factor
        self.n_group, self.topk_group = cfg.n_group, cfg.topk_group
        self.norm_topk_prob = cfg.norm_topk_prob
        self.weight = nn.Parameter(torch.randn(self.n_routed_experts, cfg.hidden_size) * 0.3)
        self.register_buffer("e_score_correction_bias", torch.zeros(self.n_routed_experts))

    def forward(self, x):
        scores = F.linear(x, self.weight).sigmoid()
        choice = scores + self.e_score_correction_bias.unsqueeze(0)
        E, G = self.n_routed_experts, self.n_group
        group_scores = choice.view(-1, G, E // G).topk(2, dim=-1)[0].sum(dim=-1)
        group_idx = torch.topk(group_scores, k=self.topk_group, dim=-1, sorted=False)[1]
        group_mask = torch.zeros_like(group_scores).scatter_(1, group_idx, 1)
        score_mask = group_mask.unsqueeze(-1).expand(-1, G, E // G).reshape(-1, E)
        choice = choice.masked_fill(~score_mask.bool(), 0.0)
        idx = torch.topk(choice, k=self.top_k, dim=-1, sorted=False)[1]
        w = scores.gather(1, idx)
        if self.norm_topk_prob:
            w = w / (w.sum(dim=-1, keepdim=True) + 1e-20)
        return idx, w * self.routed_scaling_factor


class DeepseekV3MoE(nn.Module):
    def __init__(self, cfg, fused=False):
        super().__init__()
        d, E, h = cfg.hidden_size, cfg.n_routed_experts, cfg.moe_intermediate_size
        self.fused, self.num_experts = fused, E
        self.experts = FusedExperts(E, d, h) if fused else nn.ModuleList(
            [SwiGLU(d, h) for _ in range(E)])
        self.gate = DeepseekV3TopkRouter(cfg)
        self.shared_experts = SwiGLU(d, h * cfg.n_shared_experts)

    def forward(self, hidden_states):
        shape = hidden_states.shape
        x = hidden_states.view(-1, shape[-1])
        idx, w = self.gate(x)
        run = self.experts.run if self.fused else (lambda e, t: self.experts[e](t))
        out = combine(x, run, idx, w, self.num_experts).view(*shape)
        return out + self.shared_experts(hidden_states)


BLOCKS = {"mixtral": MixtralSparseMoeBlock, "qwen2_moe": Qwen2MoeSparseMoeBlock,
          "qwen3_moe": Qwen3MoeSparseMoeBlock, "olmoe": OlmoeSparseMoeBlock,
          "deepseek_v3": DeepseekV3MoE}
# HF's config key of the number of routed experts.
EXPERTS_KEY = {"mixtral": "num_local_experts", "qwen2_moe": "num_experts",
               "qwen3_moe": "num_experts", "olmoe": "num_experts",
               "deepseek_v3": "n_routed_experts"}
# Where the block sits in a decoder layer (v4 Mixtral: block_sparse_moe).
ATTRIBUTE = {"mixtral": "block_sparse_moe"}

CONFIGS = {
    "mixtral": config(hidden_size=8, intermediate_size=6, num_local_experts=4,
                      num_experts_per_block=4, num_experts_per_tok=2, router_jitter_noise=0.0),
    "qwen2_moe": config(hidden_size=8, moe_intermediate_size=5, shared_expert_intermediate_size=7,
                        num_experts=5, num_experts_per_block=5, num_experts_per_tok=3,
                        norm_topk_prob=False),
    "qwen3_moe": config(hidden_size=8, moe_intermediate_size=5, num_experts=6,
                        num_experts_per_block=6, num_experts_per_tok=2, norm_topk_prob=True),
    "olmoe": config(hidden_size=8, intermediate_size=4, num_experts=4, num_experts_per_block=4,
                    num_experts_per_tok=2, norm_topk_prob=False),
    "deepseek_v3": config(hidden_size=8, moe_intermediate_size=4, n_routed_experts=8,
                          n_shared_experts=2, num_experts_per_tok=3, n_group=4, topk_group=2,
                          norm_topk_prob=True, routed_scaling_factor=2.5, scoring_func="sigmoid",
                          topk_method="noaux_tc"),
}


class Layer(nn.Module):
    def __init__(self, family, cfg, fused):
        super().__init__()
        self.attribute = ATTRIBUTE.get(family, "mlp") if not fused else "mlp"
        setattr(self, self.attribute, BLOCKS[family](cfg, fused))

    def forward(self, x):
        y = getattr(self, self.attribute)(x)
        logits = None
        if isinstance(y, tuple):
            y, logits = y
        return x + y, logits


class Model(nn.Module):
    """Two decoder layers of one family, each a residual around its MoE block; `config` as HF."""

    def __init__(self, family, fused=False, layers=2, **overrides):
        super().__init__()
        if EXPERTS_KEY[family] in overrides:
            overrides.setdefault("num_experts_per_block", overrides[EXPERTS_KEY[family]])
        self.config = types.SimpleNamespace(**{**vars(CONFIGS[family]), **overrides})
        self.layers = nn.ModuleList([Layer(family, self.config, fused) for _ in range(layers)])
        with torch.no_grad():
            for name, p in self.named_parameters():
                p.normal_(0, 0.3)
            for name, b in self.named_buffers():
                if name.endswith("e_score_correction_bias"):
                    b.normal_(0, 0.2)

    def forward(self, x):
        logits = []
        for layer in self.layers:
            x, lg = layer(x)
            logits.append(lg)
        return x, logits


# config.json of each family's checkpoint (sizes as CONFIGS; attention sizes the reader needs).
CONFIG_JSON = {
    "mixtral": dict(model_type="mixtral", intermediate_size=6, num_local_experts=4,
                    num_experts_per_tok=2),
    "qwen2_moe": dict(model_type="qwen2_moe", intermediate_size=16, moe_intermediate_size=5,
                      shared_expert_intermediate_size=7, num_experts=5, num_experts_per_tok=3),
    "qwen3_moe": dict(model_type="qwen3_moe", intermediate_size=16, moe_intermediate_size=5,
                      num_experts=6, num_experts_per_tok=2, norm_topk_prob=True, head_dim=4),
    "olmoe": dict(model_type="olmoe", intermediate_size=4, num_experts=4, num_experts_per_tok=2),
    "deepseek_v3": dict(model_type="deepseek_v3", intermediate_size=16, moe_intermediate_size=4,
                        n_routed_experts=8, n_shared_experts=2, num_experts_per_tok=3, n_group=4,
                        topk_group=2, routed_scaling_factor=2.5, first_k_dense_replace=0,
                        q_lora_rank=4, kv_lora_rank=4, qk_nope_head_dim=4, qk_rope_head_dim=2,
                        v_head_dim=4),
}


class CausalLM(nn.Module):
    """HF's top level: model.embed_tokens, model.layers.N.<block>, lm_head; config on top."""

    def __init__(self, family, fused, seed=0, **overrides):
        super().__init__()
        torch.manual_seed(seed)
        self.model = Model(family, fused, **overrides)
        self.model.embed_tokens = nn.Embedding(16, 8)
        self.lm_head = nn.Linear(8, 16, bias=False)
        self.config = self.model.config
        self.double()

    def forward(self, x):
        return self.lm_head(self.model(x)[0])


def write_checkpoint(path, family, tensors, shards=1, **overrides):
    """A checkpoint directory: config.json (the family's, with `overrides`) and the tensors in
    `shards` files."""
    import hybridmoe  # the writer; hf_modules itself needs only torch

    path.mkdir(parents=True, exist_ok=True)
    cfg = dict(hidden_size=8, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
               vocab_size=16, **{**CONFIG_JSON[family], **overrides})
    (path / "config.json").write_text(json.dumps(cfg))
    items = list(tensors.items())
    if shards == 1:
        hybridmoe._C._safetensors_save(str(path / "model.safetensors"), items)
        return path
    weight_map = {}
    for s in range(shards):
        file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = items[s::shards]
        hybridmoe._C._safetensors_save(str(path / file), part)
        weight_map.update({name: file for name, _ in part})
    (path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}))
    return path
