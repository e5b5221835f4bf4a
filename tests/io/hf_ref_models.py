"""Float64 reference forward of five Hugging Face MoE families (the oracle for hybridmoe's HF
importer): one forward function per family, over the checkpoint files hf_ref_io.py reads (all of
which this module re-exports, so callers use one module). The CLI file's header (hf_reference.py)
documents the families, defaults and sources.

Everything is computed in float64 with torch (CPU), for one sequence at positions 0..T-1, causal,
no padding, following the eager-attention semantics of transformers' modeling files.
"""

import math
import re

import torch

import hf_ref_io

# Everything of hf_ref_io (its private helpers included) is re-exported: callers use one module.
globals().update({k: v for k, v in vars(hf_ref_io).items() if not k.startswith("__")})
RefError = hf_ref_io.RefError

# --------------------------------------------------------------------------------------------
# Weights: name lookup with shape checks, both expert layouts, and a record of what was used
# --------------------------------------------------------------------------------------------

class Weights:
    def __init__(self, tensors, cfg):
        self.t = tensors
        self.used = set()
        self.cfg = cfg

    def has(self, name):
        return name in self.t

    def get(self, name, shape):
        if name not in self.t:
            raise RefError(f"missing tensor {name} (expected shape {list(shape)})")
        w = self.t[name]
        if list(w.shape) != list(shape):
            raise RefError(f"tensor {name}: shape {list(w.shape)}, expected {list(shape)}")
        self.used.add(name)
        return w

    def experts(self, prefixes, E, I, H, names=("gate_proj", "up_proj", "down_proj")):
        """[(gate [I,H], up [I,H], down [H,I])] * E from per-expert or fused (v5) storage.

        prefixes: the MoE block prefixes to try (Mixtral: block_sparse_moe for v4, mlp for v5).
        Fused: <prefix>.experts.gate_up_proj [E, 2I, H] (gate rows, then up rows) and
               <prefix>.experts.down_proj [E, H, I].
        """
        for p in prefixes:
            fused_gu, fused_d = f"{p}.experts.gate_up_proj", f"{p}.experts.down_proj"
            per_expert = f"{p}.experts.0.{names[0]}.weight"
            if fused_gu in self.t and per_expert in self.t:
                raise RefError(f"{p}: both fused and per-expert expert tensors present")
            if fused_gu in self.t:
                gu = self.get(fused_gu, (E, 2 * I, H))
                dn = self.get(fused_d, (E, H, I))
                return [(gu[e, :I], gu[e, I:], dn[e]) for e in range(E)]
            if per_expert in self.t:
                g, u, d = names
                return [(self.get(f"{p}.experts.{e}.{g}.weight", (I, H)),
                         self.get(f"{p}.experts.{e}.{u}.weight", (I, H)),
                         self.get(f"{p}.experts.{e}.{d}.weight", (H, I))) for e in range(E)]
        raise RefError(f"no expert tensors under {' or '.join(prefixes)} (per-expert or fused)")

    def check_all_used(self):
        L = self.cfg["num_hidden_layers"]
        extra = []
        for name in self.t:
            if name in self.used or name.endswith("rotary_emb.inv_freq"):
                continue
            m = re.match(r"model\.layers\.(\d+)\.", name)
            if self.cfg["family"] == "deepseek_v3" and m and int(m.group(1)) >= L:
                continue  # DeepSeek-V3's multi-token-prediction layer(s): HF ignores them too
            extra.append(name)
        if extra:
            raise RefError(f"{len(extra)} tensors not used by the {self.cfg['family']} forward, e.g. "
                           f"{sorted(extra)[:5]}")


# --------------------------------------------------------------------------------------------
# Building blocks (all float64)
# --------------------------------------------------------------------------------------------

def rms_norm(x, w, eps):
    # x [..., D], w [D]: x / sqrt(mean(x^2) + eps) * w
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def linear(x, w, b=None):
    y = x @ w.t()
    return y if b is None else y + b


def swiglu(x, gate_w, up_w, down_w):
    # x [N, H]; gate/up [I, H]; down [H, I]
    return linear(torch.nn.functional.silu(linear(x, gate_w)) * linear(x, up_w), down_w)


def _yarn_mscale(scale, m=1.0):
    return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0


def rope_tables(rope, dim, T):
    """cos, sin [T, dim] in the rotate-half layout (frequency table repeated twice), and the factor
    already multiplied in (YaRN's attention factor; 1 for default RoPE)."""
    base = rope["theta"]
    exps = torch.arange(0, dim, 2, dtype=torch.float64) / dim
    inv_freq = 1.0 / base ** exps  # [dim/2]
    factor_cs = 1.0
    if rope["type"] == "yarn":
        s = rope["factor"]
        if rope["attention_factor"] is not None:
            factor_cs = float(rope["attention_factor"])
        elif rope["mscale"] and rope["mscale_all_dim"]:
            factor_cs = _yarn_mscale(s, rope["mscale"]) / _yarn_mscale(s, rope["mscale_all_dim"])
        else:
            factor_cs = _yarn_mscale(s)

        def corr_dim(n_rot):  # dimension index at which the wavelength covers n_rot turns over the window
            return dim * math.log(rope["original_max"] / (n_rot * 2 * math.pi)) / (2 * math.log(base))

        lo, hi = corr_dim(rope["beta_fast"]), corr_dim(rope["beta_slow"])
        if rope["truncate"]:
            lo, hi = math.floor(lo), math.ceil(hi)
        lo, hi = max(lo, 0), min(hi, dim - 1)
        if lo == hi:
            hi += 0.001
        ramp = ((torch.arange(dim // 2, dtype=torch.float64) - lo) / (hi - lo)).clamp(0, 1)
        # ramp 0 -> keep the original frequency (extrapolate), ramp 1 -> divide it by the factor
        inv_freq = (inv_freq / s) * ramp + inv_freq * (1 - ramp)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv_freq[None, :]  # [T, dim/2]
    ang = torch.cat([ang, ang], dim=-1)  # [T, dim]
    return ang.cos() * factor_cs, ang.sin() * factor_cs


def apply_rope(x, cos, sin, interleaved=False):
    """x [heads, T, d]. Rotate-half layout pairs (i, i + d/2). interleaved: the input pairs are
    (2i, 2i+1); they are first gathered into rotate-half order (evens, then odds) -- the result stays
    in that order, which is harmless because q and k are permuted alike."""
    if interleaved:
        x = torch.cat([x[..., 0::2], x[..., 1::2]], dim=-1)
    d = x.shape[-1] // 2
    rot = torch.cat([-x[..., d:], x[..., :d]], dim=-1)
    return x * cos + rot * sin


def causal_attention(q, k, v, scale, window=None):
    """q [nh, T, dq], k [nkv, T, dq], v [nkv, T, dv] -> [T, nh * dv]. Query head h reads kv head
    h // (nh / nkv). window (Mixtral sliding_window): key j visible from i iff 0 <= i - j < window."""
    nh, T, _ = q.shape
    rep = nh // k.shape[0]
    k = k.repeat_interleave(rep, dim=0)
    v = v.repeat_interleave(rep, dim=0)
    scores = (q @ k.transpose(1, 2)) * scale  # [nh, T, T]
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    hidden = j > i
    if window is not None:
        hidden = hidden | (i - j >= window)
    scores = scores.masked_fill(hidden, float("-inf"))
    out = torch.softmax(scores, dim=-1) @ v  # [nh, T, dv]
    return out.transpose(0, 1).reshape(T, -1)


class RouteLog:
    """Smallest gap seen between the last selected and the first unselected score (router logits for
    the softmax routers, biased sigmoid scores for DeepSeek), and between selected and unselected
    group scores (DeepSeek), over all tokens and layers."""

    def __init__(self):
        self.expert_margin = math.inf
        self.group_margin = math.inf
        self.selections = []  # per MoE layer: [T, k] expert indices

    def note(self, sorted_scores, k, kind="expert"):
        if k < sorted_scores.numel():
            gap = float(sorted_scores[k - 1] - sorted_scores[k])
            if kind == "expert":
                self.expert_margin = min(self.expert_margin, gap)
            else:
                self.group_margin = min(self.group_margin, gap)


def route_softmax_topk(logits, k, renormalize, log):
    """Mixtral / Qwen2-MoE / Qwen3-MoE / OLMoE: softmax over all experts, keep the top k
    probabilities, divide them by their sum only if renormalize. logits [T, E] -> idx, w [T, k]."""
    probs = torch.softmax(logits, dim=-1)
    srt = probs.sort(dim=-1, descending=True)
    idx, w = srt.indices[:, :k], srt.values[:, :k]
    for t in range(probs.shape[0]):
        log.note(logits[t].sort(descending=True).values, k)  # gap measured in logits (same order)
    if renormalize:
        w = w / w.sum(-1, keepdim=True)
    return idx, w


def route_deepseek(logits, bias, cfg, log):
    """DeepSeek-V3: sigmoid scores; the selection uses scores + e_score_correction_bias, limited to the
    topk_group groups with the largest sum of their two best (biased) scores; experts of the other
    groups get a selection score of exactly 0.0 (not -inf, as in HF); the weights are the *unbiased*
    sigmoid scores of the chosen experts, divided by (their sum + 1e-20) if norm_topk_prob, then
    multiplied by routed_scaling_factor."""
    E, G, kg, k = cfg["n_routed_experts"], cfg["n_group"], cfg["topk_group"], cfg["num_experts_per_tok"]
    scores = torch.sigmoid(logits)  # [T, E]
    choice = scores + bias[None, :]
    T = scores.shape[0]
    group_best2 = choice.view(T, G, E // G).sort(dim=-1, descending=True).values[..., :2].sum(-1)  # [T, G]
    gsrt = group_best2.sort(dim=-1, descending=True)
    keep = torch.zeros(T, G, dtype=torch.bool)
    keep.scatter_(1, gsrt.indices[:, :kg], True)
    masked = choice.masked_fill(~keep.repeat_interleave(E // G, dim=1), 0.0)
    esrt = masked.sort(dim=-1, descending=True)
    idx = esrt.indices[:, :k]
    for t in range(T):
        log.note(gsrt.values[t], kg, "group")
        log.note(esrt.values[t], k)
    w = scores.gather(1, idx)
    if cfg["norm_topk_prob"]:
        w = w / (w.sum(-1, keepdim=True) + 1e-20)
    return idx, w * cfg["routed_scaling_factor"]


def moe_combine(x, idx, w, experts):
    # x [T, H]; idx, w [T, k]; experts [(gate, up, down)] -> sum_j w[t, j] * expert_idx[t, j](x[t])
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(idx.shape[1]):
            g, u, d = experts[int(idx[t, j])]
            out[t] += w[t, j] * swiglu(x[t:t + 1], g, u, d)[0]
    return out


# --------------------------------------------------------------------------------------------
# Attention per family
# --------------------------------------------------------------------------------------------

def attention_gqa(cfg, W, p, x, cos, sin):
    """Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE. x [T, H] -> [T, H]."""
    fam, T, H = cfg["family"], x.shape[0], cfg["hidden_size"]
    nh, nkv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    qkv_bias = {"mixtral": False, "qwen2_moe": cfg.get("qkv_bias"),
                "qwen3_moe": cfg.get("attention_bias"), "olmoe": cfg.get("attention_bias")}[fam]
    o_bias = fam in ("qwen3_moe", "olmoe") and cfg["attention_bias"]

    def proj(name, n_out, bias):
        b = W.get(f"{p}.{name}.bias", (n_out,)) if bias else None
        return linear(x, W.get(f"{p}.{name}.weight", (n_out, H)), b)

    q = proj("q_proj", nh * hd, qkv_bias)  # [T, nh*hd]
    k = proj("k_proj", nkv * hd, qkv_bias)  # [T, nkv*hd]
    v = proj("v_proj", nkv * hd, qkv_bias)
    eps = cfg["rms_norm_eps"]
    if fam == "olmoe":  # norms over the whole projection, then clipping of q, k, v
        q = rms_norm(q, W.get(f"{p}.q_norm.weight", (nh * hd,)), eps)
        k = rms_norm(k, W.get(f"{p}.k_norm.weight", (nkv * hd,)), eps)
        c = cfg["clip_qkv"]
        if c is not None:
            q, k, v = q.clamp(-c, c), k.clamp(-c, c), v.clamp(-c, c)
    q = q.view(T, nh, hd).transpose(0, 1)  # [nh, T, hd]
    k = k.view(T, nkv, hd).transpose(0, 1)
    v = v.view(T, nkv, hd).transpose(0, 1)
    if fam == "qwen3_moe":  # per-head norms over head_dim, before RoPE
        q = rms_norm(q, W.get(f"{p}.q_norm.weight", (hd,)), eps)
        k = rms_norm(k, W.get(f"{p}.k_norm.weight", (hd,)), eps)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    window = cfg.get("sliding_window") if fam == "mixtral" else None
    o = causal_attention(q, k, v, hd ** -0.5, window)  # [T, nh*hd]
    ob = W.get(f"{p}.o_proj.bias", (H,)) if o_bias else None
    return linear(o, W.get(f"{p}.o_proj.weight", (H, nh * hd)), ob)


def attention_mla(cfg, W, p, x, cos, sin):
    """DeepSeek-V3 multi-head latent attention. x [T, H] -> [T, H]."""
    T, H, nh = x.shape[0], cfg["hidden_size"], cfg["num_attention_heads"]
    dn, dr, dv = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
    dq, r_kv, r_q = dn + dr, cfg["kv_lora_rank"], cfg["q_lora_rank"]
    bias = cfg["attention_bias"]
    latent_eps = 1e-6  # q_a_layernorm / kv_a_layernorm are built without rms_norm_eps (class default)
    if r_q is None:
        q = linear(x, W.get(f"{p}.q_proj.weight", (nh * dq, H)))
    else:
        qa = linear(x, W.get(f"{p}.q_a_proj.weight", (r_q, H)),
                    W.get(f"{p}.q_a_proj.bias", (r_q,)) if bias else None)  # [T, r_q]
        qa = rms_norm(qa, W.get(f"{p}.q_a_layernorm.weight", (r_q,)), latent_eps)
        q = linear(qa, W.get(f"{p}.q_b_proj.weight", (nh * dq, r_q)))
    q = q.view(T, nh, dq).transpose(0, 1)  # [nh, T, dq]
    q_nope, q_rot = q[..., :dn], q[..., dn:]
    ckv = linear(x, W.get(f"{p}.kv_a_proj_with_mqa.weight", (r_kv + dr, H)),
                 W.get(f"{p}.kv_a_proj_with_mqa.bias", (r_kv + dr,)) if bias else None)  # [T, r_kv + dr]
    c, k_rot = ckv[:, :r_kv], ckv[:, r_kv:]
    c = rms_norm(c, W.get(f"{p}.kv_a_layernorm.weight", (r_kv,)), latent_eps)
    kv = linear(c, W.get(f"{p}.kv_b_proj.weight", (nh * (dn + dv), r_kv))).view(T, nh, dn + dv).transpose(0, 1)
    k_nope, v = kv[..., :dn], kv[..., dn:]  # [nh, T, dn], [nh, T, dv]
    k_rot = k_rot[None]  # [1, T, dr], shared by all heads
    il = bool(cfg["rope_interleave"])
    q_rot, k_rot = apply_rope(q_rot, cos, sin, il), apply_rope(k_rot, cos, sin, il)
    qs = torch.cat([q_nope, q_rot], dim=-1)
    ks = torch.cat([k_nope, k_rot.expand(nh, T, dr)], dim=-1)
    scale = dq ** -0.5
    rope = cfg["rope"]
    if rope["type"] != "default" and rope.get("mscale_all_dim"):
        m = _yarn_mscale(rope["factor"], rope["mscale_all_dim"])
        scale = scale * m * m
    o = causal_attention(qs, ks, v, scale)  # [T, nh*dv]
    return linear(o, W.get(f"{p}.o_proj.weight", (H, nh * dv)), W.get(f"{p}.o_proj.bias", (H,)) if bias else None)


# --------------------------------------------------------------------------------------------
# Feed-forward block per family; each returns the block output [T, H] for the normed input x
# --------------------------------------------------------------------------------------------

def _dense_mlp(cfg, W, p, x, inter):
    H = cfg["hidden_size"]
    return swiglu(x, W.get(f"{p}.gate_proj.weight", (inter, H)), W.get(f"{p}.up_proj.weight", (inter, H)),
                  W.get(f"{p}.down_proj.weight", (H, inter)))


def mixtral_moe(cfg, W, i, x, log):
    """Router softmax -> top-k -> renormalize (always); experts w1 (gate), w3 (up), w2 (down).
    v4 stores block_sparse_moe.*, v5 mlp.* (router renamed, experts fused)."""
    E, H, I, k = cfg["num_local_experts"], cfg["hidden_size"], cfg["intermediate_size"], cfg["num_experts_per_tok"]
    prefixes = [f"model.layers.{i}.block_sparse_moe", f"model.layers.{i}.mlp"]
    gate = next((f"{pf}.gate.weight" for pf in prefixes if W.has(f"{pf}.gate.weight")), f"{prefixes[0]}.gate.weight")
    idx, w = route_softmax_topk(linear(x, W.get(gate, (E, H))), k, True, log)
    log.selections.append(idx)
    return moe_combine(x, idx, w, W.experts(prefixes, E, I, H, names=("w1", "w3", "w2")))


def qwen2_moe_block(cfg, W, i, x, log):
    """Softmax -> top-k, renormalized only if norm_topk_prob; plus the shared expert scaled by
    sigmoid(shared_expert_gate(x)) (one logit per token)."""
    p, H = f"model.layers.{i}.mlp", cfg["hidden_size"]
    if cfg["layer_kinds"][i] == "dense":
        return _dense_mlp(cfg, W, p, x, cfg["intermediate_size"])
    E, I, k = cfg["num_experts"], cfg["moe_intermediate_size"], cfg["num_experts_per_tok"]
    idx, w = route_softmax_topk(linear(x, W.get(f"{p}.gate.weight", (E, H))), k, bool(cfg["norm_topk_prob"]), log)
    log.selections.append(idx)
    routed = moe_combine(x, idx, w, W.experts([p], E, I, H))
    shared = _dense_mlp(cfg, W, f"{p}.shared_expert", x, cfg["shared_expert_intermediate_size"])
    gate = torch.sigmoid(linear(x, W.get(f"{p}.shared_expert_gate.weight", (1, H))))  # [T, 1]
    return routed + gate * shared


def qwen3_moe_block(cfg, W, i, x, log):
    """Softmax -> top-k, renormalized only if norm_topk_prob; no shared expert."""
    p, H = f"model.layers.{i}.mlp", cfg["hidden_size"]
    if cfg["layer_kinds"][i] == "dense":
        return _dense_mlp(cfg, W, p, x, cfg["intermediate_size"])
    E, I, k = cfg["num_experts"], cfg["moe_intermediate_size"], cfg["num_experts_per_tok"]
    idx, w = route_softmax_topk(linear(x, W.get(f"{p}.gate.weight", (E, H))), k, bool(cfg["norm_topk_prob"]), log)
    log.selections.append(idx)
    return moe_combine(x, idx, w, W.experts([p], E, I, H))


def olmoe_block(cfg, W, i, x, log):
    """Every layer sparse; experts use intermediate_size; softmax -> top-k, renormalize if norm_topk_prob."""
    p, H = f"model.layers.{i}.mlp", cfg["hidden_size"]
    E, I, k = cfg["num_experts"], cfg["intermediate_size"], cfg["num_experts_per_tok"]
    idx, w = route_softmax_topk(linear(x, W.get(f"{p}.gate.weight", (E, H))), k, bool(cfg["norm_topk_prob"]), log)
    log.selections.append(idx)
    return moe_combine(x, idx, w, W.experts([p], E, I, H))


def deepseek_v3_block(cfg, W, i, x, log):
    """Dense SwiGLU (intermediate_size) for layers < first_k_dense_replace; otherwise group-limited
    sigmoid routing plus ungated shared experts of width n_shared_experts * moe_intermediate_size."""
    p, H = f"model.layers.{i}.mlp", cfg["hidden_size"]
    if cfg["layer_kinds"][i] == "dense":
        return _dense_mlp(cfg, W, p, x, cfg["intermediate_size"])
    E, I = cfg["n_routed_experts"], cfg["moe_intermediate_size"]
    logits = linear(x, W.get(f"{p}.gate.weight", (E, H)))
    idx, w = route_deepseek(logits, W.get(f"{p}.gate.e_score_correction_bias", (E,)), cfg, log)
    log.selections.append(idx)
    routed = moe_combine(x, idx, w, W.experts([p], E, I, H))
    return routed + _dense_mlp(cfg, W, f"{p}.shared_experts", x, I * cfg["n_shared_experts"])


FFN_BLOCKS = {"mixtral": mixtral_moe, "qwen2_moe": qwen2_moe_block, "qwen3_moe": qwen3_moe_block,
              "olmoe": olmoe_block, "deepseek_v3": deepseek_v3_block}


# --------------------------------------------------------------------------------------------
# Whole model
# --------------------------------------------------------------------------------------------

def forward(cfg, tensors, ids, log=None, strict=True):
    """ids: list of token ids -> logits [T, vocab] float64 (numpy). Pre-norm decoder:
    h += attn(rms(h)); h += ffn(rms(h)); logits = lm_head(rms(h))."""
    log = log if log is not None else RouteLog()
    W = Weights(tensors, cfg)
    V, H, T = cfg["vocab_size"], cfg["hidden_size"], len(ids)
    if T < 1:
        raise RefError("empty id sequence")
    if min(ids) < 0 or max(ids) >= V:
        raise RefError(f"token id out of range [0, {V})")
    eps = cfg["rms_norm_eps"]
    embed = W.get("model.embed_tokens.weight", (V, H))
    h = embed[torch.tensor(ids)].clone()  # [T, H]
    cos, sin = rope_tables(cfg["rope"], cfg["head_dim"], T)
    attn = attention_mla if cfg["family"] == "deepseek_v3" else attention_gqa
    ffn = FFN_BLOCKS[cfg["family"]]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}"
        h = h + attn(cfg, W, f"{p}.self_attn", rms_norm(h, W.get(f"{p}.input_layernorm.weight", (H,)), eps), cos, sin)
        h = h + ffn(cfg, W, i, rms_norm(h, W.get(f"{p}.post_attention_layernorm.weight", (H,)), eps), log)
    h = rms_norm(h, W.get("model.norm.weight", (H,)), eps)
    if cfg["tie_word_embeddings"]:
        head = embed
        if W.has("lm_head.weight"):
            lm = W.get("lm_head.weight", (V, H))
            if not torch.equal(lm, embed):
                raise RefError("tie_word_embeddings is true but lm_head.weight differs from the embedding")
    else:
        head = W.get("lm_head.weight", (V, H))
    if strict:
        W.check_all_used()
    return (h @ head.t()).numpy()
