#!/usr/bin/python3
"""Independent Python reference of the Hugging Face (transformers) forward pass for five MoE families,
used as the test oracle for hybridmoe's HF checkpoint importer.  Written from the semantics of the
transformers modeling/configuration files, without reading or sharing any hybridmoe C++ code.

  make-tiny --family F --out DIR [--layout per-expert|fused] [--max-shard-bytes N]
            [--dtype float32|float64|bfloat16] [--seed S] [--tie] [--yarn] (+ a few probes, see --help)
  logits    --hf DIR --ids 1,2,3 --out FILE.npy    float64 logits [T, vocab], positions 0..T-1, causal
  compare   A.npy B.npy [--rtol 1e-10]             max|a-b| / max(max|b|, 1e-300); exit 1 above rtol
  selftest                                         the checks of class SelfTest (about 5 s)

Run with /usr/bin/python3 (torch + numpy; no transformers/safetensors packages are used).
The model code lives in hf_ref_models.py next to this file.

Sources read (huggingface/transformers, src/transformers/...): models/<family>/modeling_<family>.py,
modular_<family>.py and configuration_<family>.py for mixtral, qwen2_moe, qwen3_moe, olmoe,
deepseek_v3 in both the v4.5x form (per-expert nn.ModuleList experts, rope_theta/rope_scaling) and
the v5 form (3-D fused experts, rope_parameters, dataclass configs); modeling_rope_utils.py
(_compute_yarn_parameters, v4.5x and v5); masking_utils.py (sliding_window_overlay);
conversion_mapping.py (v5 checkpoint renames/fusions).

Configuration defaults used for absent config.json keys (configuration-class defaults, which is what
from_pretrained produces; v4.5x and v5 agree on each value below):
  mixtral     rms_norm_eps 1e-5, rope_theta 1e6, num_key_value_heads 8, head_dim null -> hidden/heads,
              sliding_window null, num_local_experts 8 (v5 alias num_experts), num_experts_per_tok 2,
              tie_word_embeddings false.  Router always renormalizes the top-k.
  qwen2_moe   rms_norm_eps 1e-6, rope_theta 1e4, num_key_value_heads 16, qkv_bias true (early v4 hard-codes
              the q/k/v bias, later versions read qkv_bias), o_proj no bias, norm_topk_prob false,
              decoder_sparse_step 1, mlp_only_layers [], num_experts 60, num_experts_per_tok 4,
              moe_intermediate_size 1408, shared_expert_intermediate_size 5632, use_sliding_window false.
  qwen3_moe   rms_norm_eps 1e-6, rope_theta 1e4, num_key_value_heads 4, head_dim -> hidden/heads if
              absent, attention_bias false (q/k/v/o), norm_topk_prob false (the class default; the
              released Qwen3 MoE configs set true explicitly), decoder_sparse_step 1, mlp_only_layers [],
              num_experts 128 (v5 alias num_local_experts), num_experts_per_tok 8, moe_intermediate_size 768.
  olmoe       rms_norm_eps 1e-5, rope_theta 1e4, num_key_value_heads null -> num_attention_heads,
              attention_bias false, clip_qkv null, norm_topk_prob false, num_experts 64 (v5 alias
              num_local_experts), num_experts_per_tok 8; experts use intermediate_size.
  deepseek_v3 rms_norm_eps 1e-6, rope_theta 1e4, rope_interleave true, attention_bias false,
              q_lora_rank 1536 (null -> direct q_proj), kv_lora_rank 512, qk_nope/rope/v 128/64/128,
              n_routed_experts 256 (v5 alias num_local_experts), num_experts_per_tok 8, n_group 8,
              topk_group 4, norm_topk_prob true, routed_scaling_factor 2.5, n_shared_experts 1,
              first_k_dense_replace 3, num_key_value_heads 128 (must equal the head count for MLA).
Refused (exit 2, naming the key): unknown model_type, hidden_act other than silu, rope types other
than default/yarn, partial_rotary_factor != 1, qwen2/3 use_sliding_window, head_dim that versions
read differently (qwen2_moe, olmoe, deepseek), DeepSeek scoring_func/topk_method/moe_layer_freq other
than sigmoid/noaux_tc/1, a YaRN factor that disagrees with max_position_embeddings / original (v4.5x
uses the ratio, v5 the factor), missing/misshapen/unused tensors.

What v5 stores (conversion_mapping.py + the v5 MixtralExperts/Qwen2MoeExperts/DeepseekV3NaiveMoe):
  experts fused per layer as <block>.experts.gate_up_proj [E, 2*I, H] (rows 0..I-1 the gate
  projection = v4 gate_proj / Mixtral w1, rows I..2I-1 the up projection = up_proj / w3; forward is
  linear(x, gate_up_proj[e]).chunk(2, -1)) and <block>.experts.down_proj [E, H, I] (= down_proj / w2),
  i.e. each expert matrix in nn.Linear [out, in] orientation, not transposed.  Mixtral v5 renames
  block_sparse_moe.gate -> mlp.gate and block_sparse_moe.experts.* -> mlp.experts.{gate_up_proj,
  down_proj}; qwen2_moe, qwen3_moe, olmoe, deepseek_v3 keep mlp.gate (and mlp.gate.
  e_score_correction_bias, mlp.shared_expert(s), mlp.shared_expert_gate) unchanged.  The reader
  accepts either layout under either Mixtral prefix.

HF semantics an importer must match (all implemented here):
  * RMSNorm: x * rsqrt(mean(x^2) + eps) * w.  DeepSeek q_a_layernorm / kv_a_layernorm use eps 1e-6
    whatever rms_norm_eps says (built without the eps argument).
  * RoPE rotate-half: pairs (i, i + d/2), cos/sin of position * theta^(-2i/d) repeated twice.
    DeepSeek rope_interleave (default true): the rope slice of q and k is first reordered
    (evens, then odds), i.e. pairs (2i, 2i+1) rotate; false -> plain rotate-half.  RoPE spans
    head_dim (qwen3: the explicit head_dim) and only qk_rope_head_dim for DeepSeek; the DeepSeek
    rope key part comes from kv_a_proj_with_mqa and is shared by all heads.
  * GQA: query head h uses kv head h // (heads / kv_heads).  Softmax scale head_dim^-0.5; DeepSeek
    qk_head_dim^-0.5, times mscale(factor, mscale_all_dim)^2 with yarn when mscale_all_dim is set,
    mscale(s, m) = 0.1 m ln s + 1 (1 if s <= 1).
  * YaRN: frequencies blended by a ramp over [floor(lo), ceil(hi)] (truncate default true) computed
    with original_max_position_embeddings; cos and sin are multiplied by the attention factor
    mscale(f, mscale) / mscale(f, mscale_all_dim) (when both set) else mscale(f), so the rope
    part of each q.k gets that factor squared.  --yarn uses mscale 1.0, mscale_all_dim 0.8 so that
    both the cos/sin factor and the softmax-scale factor differ from 1 (with DeepSeek's released
    1.0/1.0 the cos/sin factor is exactly 1 and would go untested).
  * Qwen2-MoE: q/k/v biases (qkv_bias, default true), no o bias; MoE output = routed +
    sigmoid(shared_expert_gate(x)) * shared_expert(x), the gate a [1, H] linear giving one scalar
    per token; the top-k probabilities are NOT renormalized unless norm_topk_prob (default false).
    Dense layers (mlp_only_layers, or (i+1) % decoder_sparse_step != 0) use intermediate_size.
  * Qwen3-MoE: q_norm/k_norm are RMSNorms over head_dim applied per head after the projection and
    before RoPE; no shared expert; head_dim may differ from hidden/heads.
  * OLMoE: q_norm over the whole q projection [heads*head_dim] and k_norm over [kv_heads*head_dim],
    then clip_qkv clamps q, k and v (norm first, then clip), then reshape + RoPE.
  * DeepSeek-V3 router: logits -> sigmoid; selection scores = sigmoid + e_score_correction_bias;
    group score = sum of the top-2 selection scores in each of n_group groups; keep topk_group
    groups; experts of other groups get selection score 0.0 (HF masks with 0, not -inf: identical
    while all selection scores are positive, as in these tiny checkpoints where the bias is in
    [0.05, 0.6]); top-k of the masked scores; weights = unbiased sigmoid scores of the chosen
    experts, / (sum + 1e-20) if norm_topk_prob, * routed_scaling_factor.  Shared experts are an
    ungated SwiGLU of width n_shared_experts * moe_intermediate_size added to the routed output;
    layers < first_k_dense_replace are dense with intermediate_size.  HF computes this router in
    float32 even for a float64 model; HF also computes inv_freq/cos/sin in float32.  This reference
    keeps everything in float64, so HF run in float64 agrees with it only to ~1e-7.
  * Mixtral: softmax -> top-k -> renormalize (always); sliding_window (null in released configs)
    hides key j from query i when i - j >= window (v5 masking_utils; older versions differed).
  * tie_word_embeddings: lm_head is the embedding matrix and lm_head.weight is absent.
"""

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from collections import OrderedDict

try:
    import numpy as np
    import torch
except ImportError as e:  # ctest reports exit 77 as a skip, with this reason
    print("SKIP: %s has no %s (scripts/install_deps.sh --python installs python3-torch)" % (
        sys.executable, e.name))
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_ref_models as M  # noqa: E402

torch.set_default_dtype(torch.float64)

FAMILIES = list(M.FAMILY_DEFAULTS)
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


# --------------------------------------------------------------------------------------------
# make-tiny: config.json of each family at a tiny size
# --------------------------------------------------------------------------------------------

def tiny_config(family, dtype="float32", tie=False, yarn=False, experts=None, top_k=None,
                no_q_lora=False, attn_bias=False, no_rope_interleave=False, sliding_window=None,
                rms_norm_eps=None):
    """The keys each configuration class writes, at a tiny size where every layer kind appears."""
    if yarn and family != "deepseek_v3":
        raise M.RefError("--yarn is for deepseek_v3 only")
    c = OrderedDict(architectures=[M.ARCHITECTURES[family]], model_type=family)
    common = dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, hidden_act="silu",
                  max_position_embeddings=256, initializer_range=0.02, use_cache=True,
                  rope_theta=10000.0, rope_scaling=None, attention_dropout=0.0, tie_word_embeddings=tie,
                  output_router_logits=False, torch_dtype=dtype)
    if family == "mixtral":
        c.update(common, vocab_size=320, intermediate_size=40, num_hidden_layers=2, head_dim=None,
                 rms_norm_eps=1e-5, sliding_window=sliding_window, num_local_experts=8,
                 num_experts_per_tok=2, router_aux_loss_coef=0.001, router_jitter_noise=0.0,
                 bos_token_id=1, eos_token_id=2)
    elif family == "qwen2_moe":
        c.update(common, vocab_size=384, intermediate_size=48, num_hidden_layers=3, rms_norm_eps=1e-6,
                 use_sliding_window=False, sliding_window=4096, max_window_layers=3,
                 decoder_sparse_step=1, mlp_only_layers=[1], moe_intermediate_size=16,
                 shared_expert_intermediate_size=40, num_experts=8, num_experts_per_tok=2,
                 norm_topk_prob=False, qkv_bias=True, router_aux_loss_coef=0.001,
                 bos_token_id=151643, eos_token_id=151643)
    elif family == "qwen3_moe":
        c.update(common, vocab_size=352, intermediate_size=48, num_hidden_layers=4, head_dim=16,
                 rms_norm_eps=1e-6, attention_bias=attn_bias, use_sliding_window=False,
                 sliding_window=None, max_window_layers=4, decoder_sparse_step=2, mlp_only_layers=[],
                 moe_intermediate_size=20, num_experts=8, num_experts_per_tok=2, norm_topk_prob=True,
                 router_aux_loss_coef=0.001, bos_token_id=151643, eos_token_id=151645)
    elif family == "olmoe":
        c.update(common, vocab_size=336, intermediate_size=24, num_hidden_layers=2, rms_norm_eps=1e-5,
                 attention_bias=attn_bias, clip_qkv=1.5, num_experts=8, num_experts_per_tok=2,
                 norm_topk_prob=False, router_aux_loss_coef=0.01, pad_token_id=1, bos_token_id=None,
                 eos_token_id=50279)
    elif family == "deepseek_v3":
        c.update(common, vocab_size=400, intermediate_size=48, moe_intermediate_size=12,
                 num_hidden_layers=3, num_key_value_heads=4, n_shared_experts=2, n_routed_experts=8,
                 routed_scaling_factor=2.5, kv_lora_rank=16, q_lora_rank=None if no_q_lora else 24,
                 qk_rope_head_dim=8, v_head_dim=12, qk_nope_head_dim=8, qk_head_dim=16, head_dim=8,
                 n_group=4, topk_group=2, num_experts_per_tok=2, first_k_dense_replace=1,
                 norm_topk_prob=True, rms_norm_eps=1e-6, rope_interleave=not no_rope_interleave,
                 attention_bias=attn_bias, pretraining_tp=1, bos_token_id=0, eos_token_id=1)
        if yarn:
            c["rope_scaling"] = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
                                 "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 0.8}
            c["max_position_embeddings"] = 64
    else:
        raise M.RefError(f"unknown family {family!r}")
    ekey = M._EXPERT_KEYS[family][0]
    if experts is not None:
        c[ekey] = experts
    if top_k is not None:
        c["num_experts_per_tok"] = top_k
    if rms_norm_eps is not None:  # deepseek_v3: the latent norms keep 1e-6 regardless
        c["rms_norm_eps"] = rms_norm_eps
    return c


# --------------------------------------------------------------------------------------------
# make-tiny: weights, generated in the per-expert (v4) layout, then renamed/fused for v5
# --------------------------------------------------------------------------------------------

def tiny_param_specs(cfg):
    """[(name, shape, init kind)] in the v4 per-expert layout, in model order."""
    fam, H, V = cfg["family"], cfg["hidden_size"], cfg["vocab_size"]
    nh, nkv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    specs = [("model.embed_tokens.weight", (V, H), "embed")]

    def lin(name, out_f, in_f, bias=False):
        specs.append((f"{name}.weight", (out_f, in_f), "linear"))
        if bias:
            specs.append((f"{name}.bias", (out_f,), "bias"))

    def mlp(p, inter):
        lin(f"{p}.gate_proj", inter, H)
        lin(f"{p}.up_proj", inter, H)
        lin(f"{p}.down_proj", H, inter)

    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}"
        specs.append((f"{p}.input_layernorm.weight", (H,), "norm"))
        a = f"{p}.self_attn"
        if fam == "deepseek_v3":
            dn, dr, dv = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
            rq, rkv, b = cfg["q_lora_rank"], cfg["kv_lora_rank"], cfg["attention_bias"]
            if rq is None:
                lin(f"{a}.q_proj", nh * (dn + dr), H)
            else:
                lin(f"{a}.q_a_proj", rq, H, b)
                specs.append((f"{a}.q_a_layernorm.weight", (rq,), "norm"))
                lin(f"{a}.q_b_proj", nh * (dn + dr), rq)
            lin(f"{a}.kv_a_proj_with_mqa", rkv + dr, H, b)
            specs.append((f"{a}.kv_a_layernorm.weight", (rkv,), "norm"))
            lin(f"{a}.kv_b_proj", nh * (dn + dv), rkv)
            lin(f"{a}.o_proj", H, nh * dv, b)
        else:
            qkv_b = {"mixtral": False, "qwen2_moe": cfg.get("qkv_bias"),
                     "qwen3_moe": cfg.get("attention_bias"), "olmoe": cfg.get("attention_bias")}[fam]
            lin(f"{a}.q_proj", nh * hd, H, qkv_b)
            lin(f"{a}.k_proj", nkv * hd, H, qkv_b)
            lin(f"{a}.v_proj", nkv * hd, H, qkv_b)
            lin(f"{a}.o_proj", H, nh * hd, fam in ("qwen3_moe", "olmoe") and cfg["attention_bias"])
            if fam == "qwen3_moe":
                specs += [(f"{a}.q_norm.weight", (hd,), "norm"), (f"{a}.k_norm.weight", (hd,), "norm")]
            if fam == "olmoe":
                specs += [(f"{a}.q_norm.weight", (nh * hd,), "norm"), (f"{a}.k_norm.weight", (nkv * hd,), "norm")]
        specs.append((f"{p}.post_attention_layernorm.weight", (H,), "norm"))
        E = cfg["num_experts_total"]
        if cfg["layer_kinds"][i] == "dense":
            mlp(f"{p}.mlp", cfg["intermediate_size"])
        elif fam == "mixtral":
            I = cfg["intermediate_size"]
            specs.append((f"{p}.block_sparse_moe.gate.weight", (E, H), "router"))
            for e in range(E):
                ep = f"{p}.block_sparse_moe.experts.{e}"
                lin(f"{ep}.w1", I, H)
                lin(f"{ep}.w2", H, I)
                lin(f"{ep}.w3", I, H)
        else:
            I = cfg["intermediate_size"] if fam == "olmoe" else cfg["moe_intermediate_size"]
            specs.append((f"{p}.mlp.gate.weight", (E, H), "router"))
            if fam == "deepseek_v3":
                specs.append((f"{p}.mlp.gate.e_score_correction_bias", (E,), "score_bias"))
            for e in range(E):
                mlp(f"{p}.mlp.experts.{e}", I)
            if fam == "qwen2_moe":
                mlp(f"{p}.mlp.shared_expert", cfg["shared_expert_intermediate_size"])
                specs.append((f"{p}.mlp.shared_expert_gate.weight", (1, H), "linear"))
            if fam == "deepseek_v3":
                mlp(f"{p}.mlp.shared_experts", I * cfg["n_shared_experts"])
    specs.append(("model.norm.weight", (H,), "norm"))
    if not cfg["tie_word_embeddings"]:
        specs.append(("lm_head.weight", (V, H), "linear"))
    return specs


def init_tensor(name, shape, kind, seed, cfg):
    """Seeded per tensor name, so a tensor's values do not depend on the layout or on other tensors."""
    g = torch.Generator().manual_seed((seed * 1000003 + zlib.crc32(name.encode())) % (2 ** 62))
    z = torch.randn(*shape, generator=g, dtype=torch.float64)
    if kind == "embed":
        return z
    if kind == "norm":  # ~1 with enough spread that a wrong or skipped norm weight shows
        return 1.0 + 0.1 * z
    if kind == "linear":
        return z / math.sqrt(shape[-1])
    if kind == "bias":
        return 0.1 * z
    if kind == "router":  # logits of std ~3 (1.5 for sigmoid routing): clear top-k margins
        return z * (1.5 if cfg["family"] == "deepseek_v3" else 3.0) / math.sqrt(shape[-1])
    if kind == "score_bias":  # positive and large enough to change which experts are picked
        u = torch.rand(*shape, generator=g, dtype=torch.float64)
        return 0.05 + 0.55 * u
    raise ValueError(kind)


def to_fused(tensors, cfg):
    """v4 per-expert names -> v5 fused layout (and Mixtral's block_sparse_moe -> mlp rename)."""
    fam, E = cfg["family"], cfg["num_experts_total"]
    out = OrderedDict()
    for name, t in tensors.items():
        parts = name.split(".")
        if ".experts." in name and parts[parts.index("experts") + 1].isdigit():
            block = name[:name.index(".experts.")]
            e = int(parts[parts.index("experts") + 1])
            if e != 0 or not name.endswith(("w1.weight", "gate_proj.weight")):
                continue  # the whole block is emitted when its expert 0's gate is met
            g, u, d = ("w1", "w3", "w2") if fam == "mixtral" else ("gate_proj", "up_proj", "down_proj")
            new_block = block.replace(".block_sparse_moe", ".mlp")
            out[f"{new_block}.experts.gate_up_proj"] = torch.stack(
                [torch.cat([tensors[f"{block}.experts.{k}.{g}.weight"], tensors[f"{block}.experts.{k}.{u}.weight"]])
                 for k in range(E)])  # [E, 2I, H]
            out[f"{new_block}.experts.down_proj"] = torch.stack(
                [tensors[f"{block}.experts.{k}.{d}.weight"] for k in range(E)])  # [E, H, I]
        else:
            out[name.replace(".block_sparse_moe.", ".mlp.")] = t
    return out


def make_tiny(family, out_dir, layout="per-expert", max_shard_bytes=None, dtype="float32", seed=0,
              **cfg_kwargs):
    raw = tiny_config(family, dtype=dtype, **cfg_kwargs)
    cfg = M.resolve_config(json.loads(json.dumps(raw)))
    tdt = DTYPES[dtype]
    tensors = OrderedDict((n, init_tensor(n, s, k, seed, cfg).to(tdt)) for n, s, k in tiny_param_specs(cfg))
    if layout == "fused":
        tensors = to_fused(tensors, cfg)
    elif layout != "per-expert":
        raise M.RefError(f"unknown layout {layout!r}")
    os.makedirs(out_dir, exist_ok=True)
    for stale in os.listdir(out_dir):
        if stale.endswith(".safetensors") or stale in ("model.safetensors.index.json", "config.json"):
            os.remove(os.path.join(out_dir, stale))
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(raw, f, indent=2)
        f.write("\n")
    return M.save_checkpoint(out_dir, tensors, max_shard_bytes)


# --------------------------------------------------------------------------------------------
# logits / compare
# --------------------------------------------------------------------------------------------

def compute_logits(hf_dir, ids, log=None):
    cfg = M.load_config(hf_dir)
    return M.forward(cfg, M.load_checkpoint(hf_dir), ids, log)


def rel_diff(a, b):
    """max|a - b| / max(max|b|, 1e-300); inf when either holds a NaN."""
    if np.isnan(a).any() or np.isnan(b).any():
        return math.inf
    return float(np.max(np.abs(a - b))) / max(float(np.max(np.abs(b))) if b.size else 0.0, 1e-300)


# --------------------------------------------------------------------------------------------
# selftest helpers: independent re-derivations written differently from hf_ref_models
# --------------------------------------------------------------------------------------------

def _np_rmsnorm(x, w, eps):
    return x / np.sqrt(np.mean(x * x) + eps) * w


def numpy_dense_llama(raw, T, ids, expert_names):
    """Loop-per-token numpy forward of a dense Llama-style model (GQA, rotate-half RoPE, SwiGLU):
    what a 1-expert top-1 Mixtral must reduce to."""
    H, nh, nkv = raw["hidden_size"], raw["num_attention_heads"], raw["num_key_value_heads"]
    hd, eps, th = H // nh, raw["rms_norm_eps"], raw["rope_theta"]
    A = {k: v.numpy() for k, v in T.items()}
    x = np.stack([A["model.embed_tokens.weight"][i] for i in ids])
    n = len(ids)

    def rope(vec, pos):  # vec [hd]: pair (m, m + hd/2) rotated by pos * th^(-2m/hd)
        out = vec.copy()
        for m in range(hd // 2):
            ang = pos * th ** (-2.0 * m / hd)
            a, b = vec[m], vec[m + hd // 2]
            out[m] = a * math.cos(ang) - b * math.sin(ang)
            out[m + hd // 2] = b * math.cos(ang) + a * math.sin(ang)
        return out

    for layer in range(raw["num_hidden_layers"]):
        p = f"model.layers.{layer}"
        xn = np.stack([_np_rmsnorm(x[t], A[f"{p}.input_layernorm.weight"], eps) for t in range(n)])
        q = xn @ A[f"{p}.self_attn.q_proj.weight"].T
        k = xn @ A[f"{p}.self_attn.k_proj.weight"].T
        v = xn @ A[f"{p}.self_attn.v_proj.weight"].T
        att = np.zeros((n, nh * hd))
        for t in range(n):
            for h in range(nh):
                g = h // (nh // nkv)
                qv = rope(q[t, h * hd:(h + 1) * hd], t)
                s = np.array([qv @ rope(k[j, g * hd:(g + 1) * hd], j) / math.sqrt(hd) for j in range(t + 1)])
                pr = np.exp(s - s.max())
                pr /= pr.sum()
                att[t, h * hd:(h + 1) * hd] = sum(pr[j] * v[j, g * hd:(g + 1) * hd] for j in range(t + 1))
        x = x + att @ A[f"{p}.self_attn.o_proj.weight"].T
        w1, w3, w2 = (A[f"{p}.{nm}.weight"] for nm in expert_names)
        for t in range(n):
            y = _np_rmsnorm(x[t], A[f"{p}.post_attention_layernorm.weight"], eps)
            gt = w1 @ y
            x[t] = x[t] + w2 @ (gt / (1 + np.exp(-gt)) * (w3 @ y))
    xf = np.stack([_np_rmsnorm(x[t], A["model.norm.weight"], eps) for t in range(n)])
    return xf @ A["lm_head.weight"].T


def numpy_mla_dense(raw, T, ids):
    """Loop-based numpy DeepSeek-V3 with every layer dense (first_k_dense_replace = layers): MLA with
    interleaved pairs (2m, 2m+1) rotated directly (no reordering), latent norms at eps 1e-6, optional
    YaRN (frequencies, cos/sin factor, softmax mscale^2) derived per dimension."""
    A = {k: v.numpy() for k, v in T.items()}
    nh, eps = raw["num_attention_heads"], raw["rms_norm_eps"]
    dn, dr, dv = raw["qk_nope_head_dim"], raw["qk_rope_head_dim"], raw["v_head_dim"]
    rkv, th, rs = raw["kv_lora_rank"], raw["rope_theta"], raw.get("rope_scaling")
    freqs, fac, scale = [th ** (-2.0 * m / dr) for m in range(dr // 2)], 1.0, (dn + dr) ** -0.5
    if rs:
        f, L0 = rs["factor"], rs["original_max_position_embeddings"]
        msc = lambda m: 0.1 * m * math.log(f) + 1.0  # noqa: E731
        fac = msc(rs["mscale"]) / msc(rs["mscale_all_dim"])
        scale *= msc(rs["mscale_all_dim"]) ** 2
        cd = lambda r: dr * math.log(L0 / (r * 2 * math.pi)) / (2 * math.log(th))  # noqa: E731
        lo, hi = max(math.floor(cd(rs["beta_fast"])), 0), min(math.ceil(cd(rs["beta_slow"])), dr - 1)
        hi = hi + 0.001 if lo == hi else hi
        for m in range(dr // 2):
            r = min(max((m - lo) / (hi - lo), 0.0), 1.0)
            freqs[m] = freqs[m] * (1 - r) + freqs[m] / f * r

    def rope_il(vec, pos):
        out = vec.copy()
        for m in range(dr // 2):
            c, s = math.cos(pos * freqs[m]) * fac, math.sin(pos * freqs[m]) * fac
            out[2 * m] = vec[2 * m] * c - vec[2 * m + 1] * s
            out[2 * m + 1] = vec[2 * m + 1] * c + vec[2 * m] * s
        return out

    x = np.stack([A["model.embed_tokens.weight"][i] for i in ids])
    n = len(ids)
    for layer in range(raw["num_hidden_layers"]):
        p, a = f"model.layers.{layer}", f"model.layers.{layer}.self_attn"
        qs, ks, vs = [], [], []
        for t in range(n):
            y = _np_rmsnorm(x[t], A[f"{p}.input_layernorm.weight"], eps)
            if raw["q_lora_rank"] is None:
                q = A[f"{a}.q_proj.weight"] @ y
            else:
                q = A[f"{a}.q_b_proj.weight"] @ _np_rmsnorm(A[f"{a}.q_a_proj.weight"] @ y,
                                                             A[f"{a}.q_a_layernorm.weight"], 1e-6)
            ckv = A[f"{a}.kv_a_proj_with_mqa.weight"] @ y
            kv = A[f"{a}.kv_b_proj.weight"] @ _np_rmsnorm(ckv[:rkv], A[f"{a}.kv_a_layernorm.weight"], 1e-6)
            kr = rope_il(ckv[rkv:], t)
            qh, kh, vh = [], [], []
            for h in range(nh):
                qq = q[h * (dn + dr):(h + 1) * (dn + dr)]
                qh.append(np.concatenate([qq[:dn], rope_il(qq[dn:], t)]))
                kk = kv[h * (dn + dv):(h + 1) * (dn + dv)]
                kh.append(np.concatenate([kk[:dn], kr]))
                vh.append(kk[dn:])
            qs.append(qh), ks.append(kh), vs.append(vh)
        att = np.zeros((n, nh * dv))
        for t in range(n):
            for h in range(nh):
                s = np.array([qs[t][h] @ ks[j][h] * scale for j in range(t + 1)])
                pr = np.exp(s - s.max())
                pr /= pr.sum()
                att[t, h * dv:(h + 1) * dv] = sum(pr[j] * vs[j][h] for j in range(t + 1))
        x = x + att @ A[f"{a}.o_proj.weight"].T
        for t in range(n):
            y = _np_rmsnorm(x[t], A[f"{p}.post_attention_layernorm.weight"], eps)
            gt = A[f"{p}.mlp.gate_proj.weight"] @ y
            x[t] = x[t] + A[f"{p}.mlp.down_proj.weight"] @ (gt / (1 + np.exp(-gt)) * (A[f"{p}.mlp.up_proj.weight"] @ y))
    xf = np.stack([_np_rmsnorm(x[t], A["model.norm.weight"], eps) for t in range(n)])
    return xf @ A["lm_head.weight"].T


def numpy_qwen2_block(A, p, x, k, norm):
    """Qwen2-MoE sparse block for rows x [N, H], restated with numpy loops."""
    def mlp(q, y):
        gt = A[f"{q}.gate_proj.weight"] @ y
        return A[f"{q}.down_proj.weight"] @ (gt / (1 + np.exp(-gt)) * (A[f"{q}.up_proj.weight"] @ y))

    out = np.zeros_like(x)
    for t, y in enumerate(x):
        lg = A[f"{p}.gate.weight"] @ y
        pr = np.exp(lg - lg.max())
        pr /= pr.sum()
        top = list(np.argsort(-pr)[:k])
        w = pr[top] / (pr[top].sum() if norm else 1.0)
        routed = sum(w[j] * mlp(f"{p}.experts.{e}", y) for j, e in enumerate(top))
        gate = 1.0 / (1.0 + np.exp(-(A[f"{p}.shared_expert_gate.weight"] @ y)[0]))
        out[t] = routed + gate * mlp(f"{p}.shared_expert", y)
    return out


def naive_deepseek_route(logit_row, bias, cfg):
    """Plain-Python group-limited routing for one token (the rules of route_deepseek, restated)."""
    E, G, kg, k = cfg["n_routed_experts"], cfg["n_group"], cfg["topk_group"], cfg["num_experts_per_tok"]
    sc = [1.0 / (1.0 + math.exp(-float(v))) for v in logit_row]
    ch = [sc[e] + float(bias[e]) for e in range(E)]
    per = E // G
    gscore = [sum(sorted(ch[g * per:(g + 1) * per], reverse=True)[:2]) for g in range(G)]
    groups = sorted(range(G), key=lambda g: -gscore[g])[:kg]
    cand = [ch[e] if e // per in groups else 0.0 for e in range(E)]
    chosen = sorted(range(E), key=lambda e: -cand[e])[:k]
    w = [sc[e] for e in chosen]
    if cfg["norm_topk_prob"]:
        s = sum(w) + 1e-20
        w = [x / s for x in w]
    return chosen, [x * cfg["routed_scaling_factor"] for x in w]


# --------------------------------------------------------------------------------------------
# selftest
# --------------------------------------------------------------------------------------------

_DROP = object()  # edit_config value meaning "remove the key"


class SelfTest:
    """Shared state of the checks: a scratch directory, the token ids, a pass/fail record, and the
    float32 per-expert single-file logits of every family (base) once test_layouts has run."""

    ids = [3, 17, 42, 5, 99, 7, 250, 1, 64, 128, 12, 300]

    def __init__(self, work):
        self.work, self.results, self.base = work, [], {}

    def check(self, name, ok, detail=""):
        ok = bool(ok)
        self.results.append((name, ok))
        print(f"{'PASS' if ok else 'FAIL'}  {name}{('  ' + detail) if detail else ''}", flush=True)

    def d(self, *parts):
        return os.path.join(self.work, *parts)

    def raw_config(self, tag):
        with open(self.d(tag, "config.json")) as f:
            return json.load(f)

    def edit_config(self, tag, **changes):
        raw = self.raw_config(tag)
        for k, v in changes.items():
            if v is _DROP:
                raw.pop(k, None)
            else:
                raw[k] = v
        with open(self.d(tag, "config.json"), "w") as f:
            json.dump(raw, f)

    def copy(self, src, dst, **changes):
        shutil.copytree(self.d(src), self.d(dst))
        if changes:
            self.edit_config(dst, **changes)

    def logits(self, tag, ids=None, log=None):
        return compute_logits(self.d(tag), ids or self.ids, log)

    @staticmethod
    def cli(argv):
        try:
            return main(argv, quiet=True)
        except SystemExit as e:  # argparse errors
            return e.code

    # ---- the checks ----

    def test_safetensors(self):
        sample = OrderedDict(a=torch.randn(3, 5), b=torch.randn(7).to(torch.float32),
                             c=torch.randn(2, 3, 4).to(torch.bfloat16), s=torch.tensor(2.5),
                             h=torch.randn(4).to(torch.float16))
        path = self.d("x.safetensors")
        M.write_safetensors(path, sample, {"format": "pt"})
        back = M.read_safetensors(path)
        with open(path, "rb") as f:
            blob = f.read()
        hlen = int.from_bytes(blob[:8], "little")
        hdr = json.loads(blob[8:8 + hlen])
        offs = sorted(v["data_offsets"] for k, v in hdr.items() if k != "__metadata__")
        contiguous = (offs[0][0] == 0 and all(a[1] == b[0] for a, b in zip(offs, offs[1:]))
                      and 8 + hlen + offs[-1][1] == len(blob))
        self.check("safetensors round trip (F64/F32/BF16/F16, scalar), header padded, data contiguous",
                   all(torch.equal(sample[k], back[k][0]) for k in sample) and hlen % 8 == 0 and contiguous
                   and hdr["__metadata__"] == {"format": "pt"} and back["c"][1] == "BF16")

    def test_layouts(self):
        """Every family in per-expert/fused x single/sharded: runs, agrees exactly, is causal,
        and routes with clear margins."""
        for fam in FAMILIES:
            outs = {}
            for layout in ("per-expert", "fused"):
                for shard in (None, 6000):
                    tag = f"{fam}-{layout}-{'sharded' if shard else 'single'}"
                    files = make_tiny(fam, self.d(tag), layout=layout, max_shard_bytes=shard, seed=7)
                    if shard:
                        with open(self.d(tag, "model.safetensors.index.json")) as f:
                            index = json.load(f)
                        on_disk = sum(os.path.getsize(self.d(tag, fn)) for fn in files)
                        assert len(files) > 1 and index["metadata"]["total_size"] < on_disk
                    log = M.RouteLog()
                    outs[(layout, shard)] = self.logits(tag, log=log)
                    if layout == "per-expert" and not shard:
                        margins = (log.expert_margin, log.group_margin)
            ref = self.base[fam] = outs[("per-expert", None)]
            vocab = self.raw_config(f"{fam}-per-expert-single")["vocab_size"]
            self.check(f"{fam}: make-tiny + logits run in 4 layouts, shape {ref.shape}, finite",
                       ref.shape == (len(self.ids), vocab) and np.isfinite(ref).all())
            self.check(f"{fam}: per-expert == fused (exact)",
                       np.array_equal(outs[("per-expert", None)], outs[("fused", None)])
                       and np.array_equal(outs[("per-expert", 6000)], outs[("fused", 6000)]))
            self.check(f"{fam}: single == sharded (exact)",
                       np.array_equal(outs[("per-expert", None)], outs[("per-expert", 6000)])
                       and np.array_equal(outs[("fused", None)], outs[("fused", 6000)]))
            detail = f"min top-k gap {margins[0]:.3g}"
            if fam == "deepseek_v3":
                detail += f", group gap {margins[1]:.3g}"
            self.check(f"{fam}: routing not near-tied", margins[0] > 1e-3 and margins[1] > 1e-3, detail)
            t = 5
            alt = self.logits(f"{fam}-per-expert-single", self.ids[:t] + [x + 1 for x in self.ids[t:]])
            self.check(f"{fam}: causal (rows < {t} unchanged when later ids change, later rows change)",
                       rel_diff(alt[:t], ref[:t]) <= 1e-13 and rel_diff(alt[t:], ref[t:]) > 1e-6)

    def test_dense_mixtral(self):
        """A 1-expert top-1 Mixtral is a dense SwiGLU Llama; compare with the numpy loop version."""
        ids = self.ids[:8]
        make_tiny("mixtral", self.d("mx1"), experts=1, top_k=1, seed=3)
        tensors = M.load_checkpoint(self.d("mx1"))
        dense = {k.replace("block_sparse_moe.experts.0.", ""): v for k, v in tensors.items()}
        ref = self.logits("mx1", ids)
        want = numpy_dense_llama(self.raw_config("mx1"), dense, ids, ("w1", "w3", "w2"))
        self.check("mixtral 1 expert top-1 == independent dense SwiGLU model", rel_diff(ref, want) < 1e-12,
                   f"rel {rel_diff(ref, want):.2e}")
        make_tiny("mixtral", self.d("mx1f"), layout="fused", experts=1, top_k=1, seed=3)
        self.check("mixtral 1 expert top-1, fused v5 names (mlp.*) == per-expert",
                   np.array_equal(self.logits("mx1f", ids), ref))

    def test_mla(self):
        """DeepSeek with every layer dense vs the numpy MLA (interleaved pairs rotated in place)."""
        ids = self.ids[:10]
        for tag, kw in (("mla", {}), ("mla-noq", {"no_q_lora": True}), ("mla-yarn", {"yarn": True})):
            make_tiny("deepseek_v3", self.d(tag), seed=5, **kw)
            self.edit_config(tag, first_k_dense_replace=3)
            raw = self.raw_config(tag)
            tensors = {k: v for k, v in M.load_checkpoint(self.d(tag)).items()
                       if not any(s in k for s in (".mlp.experts.", ".mlp.shared_experts.", ".mlp.gate."))}
            for i in (1, 2):  # dense weights for the layers that held MoE blocks
                for nm, shape in (("gate_proj", (48, 32)), ("up_proj", (48, 32)), ("down_proj", (32, 48))):
                    tensors[f"model.layers.{i}.mlp.{nm}.weight"] = init_tensor(f"x{i}{nm}", shape, "linear", 1, {})
            got = M.forward(M.resolve_config(raw), tensors, ids)
            want = numpy_mla_dense(raw, tensors, ids)
            self.check(f"deepseek_v3 MLA ({tag}) == independent numpy MLA", rel_diff(got, want) < 1e-12,
                       f"rel {rel_diff(got, want):.2e}")

    def test_rope_interleave(self):
        """rope_interleave=true on W == rope_interleave=false on W with each rope slice's rows
        reordered (evens, then odds) in q_b_proj and kv_a_proj_with_mqa."""
        make_tiny("deepseek_v3", self.d("ds-il"), seed=9)
        raw = self.raw_config("ds-il")
        orig = M.load_checkpoint(self.d("ds-il"))
        perm_w = dict(orig)
        dn, dr = raw["qk_nope_head_dim"], raw["qk_rope_head_dim"]
        nh, rkv = raw["num_attention_heads"], raw["kv_lora_rank"]
        perm = list(range(0, dr, 2)) + list(range(1, dr, 2))
        for i in range(raw["num_hidden_layers"]):
            a = f"model.layers.{i}.self_attn"
            qb = orig[f"{a}.q_b_proj.weight"].view(nh, dn + dr, -1).clone()
            qb[:, dn:] = qb[:, dn:][:, perm]
            perm_w[f"{a}.q_b_proj.weight"] = qb.view(nh * (dn + dr), -1)
            kva = orig[f"{a}.kv_a_proj_with_mqa.weight"].clone()
            kva[rkv:] = kva[rkv:][perm]
            perm_w[f"{a}.kv_a_proj_with_mqa.weight"] = kva
        cfg_il = M.resolve_config(raw)
        cfg_half = M.resolve_config(dict(raw, rope_interleave=False))
        a = M.forward(cfg_il, orig, self.ids)
        b = M.forward(cfg_half, perm_w, self.ids)
        c = M.forward(cfg_half, orig, self.ids)
        self.check("deepseek_v3 rope_interleave=true == rotate-half on row-permuted weights; != unpermuted",
                   rel_diff(a, b) < 1e-12 and rel_diff(a, c) > 1e-6, f"rel {rel_diff(a, b):.2e}")

    def test_deepseek_router(self):
        cfg = M.resolve_config(self.raw_config("deepseek_v3-per-expert-single"))
        g = torch.Generator().manual_seed(11)
        logits, bias = torch.randn(64, 8, generator=g) * 1.5, 0.05 + 0.55 * torch.rand(8, generator=g)
        idx, w = M.route_deepseek(logits, bias, cfg, M.RouteLog())
        agree = True
        for t in range(64):
            chosen, weights = naive_deepseek_route(logits[t], bias, cfg)
            got = dict(zip(idx[t].tolist(), w[t].tolist()))
            agree &= set(chosen) == set(got) and all(abs(got[e] - x) < 1e-15 for e, x in zip(chosen, weights))
        self.check("deepseek_v3 route_deepseek == naive group-limited routing (64 random tokens)", agree)
        tensors = dict(M.load_checkpoint(self.d("deepseek_v3-per-expert-single")))
        with_bias, without = M.RouteLog(), M.RouteLog()
        M.forward(cfg, tensors, self.ids, with_bias)
        for i in (1, 2):
            tensors[f"model.layers.{i}.mlp.gate.e_score_correction_bias"] = torch.zeros(8)
        M.forward(cfg, tensors, self.ids, without)
        changed = sum(int(set(a.tolist()) != set(b.tolist()))
                      for s1, s2 in zip(with_bias.selections, without.selections) for a, b in zip(s1, s2))
        self.check("deepseek_v3 e_score_correction_bias changes the expert selection", changed > 0,
                   f"{changed} of {len(self.ids) * 2} token-layer selections differ")

    def test_config(self):
        """Absent keys take the class defaults; v5 rope_parameters / expert-count aliases; flags matter."""
        for fam, drops in (("qwen2_moe", ["norm_topk_prob", "qkv_bias", "decoder_sparse_step"]),
                           ("olmoe", ["attention_bias", "norm_topk_prob"]),
                           ("deepseek_v3", ["rope_interleave", "norm_topk_prob", "attention_bias"]),
                           ("mixtral", ["head_dim", "sliding_window"])):
            self.copy(f"{fam}-per-expert-single", f"{fam}-drop", **{k: _DROP for k in drops})
            self.check(f"{fam}: dropping {drops} (class defaults) leaves logits unchanged",
                       np.array_equal(self.logits(f"{fam}-drop"), self.base[fam]))
        self.copy("qwen3_moe-fused-single", "q3v5", rope_theta=_DROP, rope_scaling=_DROP, num_experts=_DROP,
                  num_local_experts=8, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
        self.check("qwen3_moe: v5-style config (rope_parameters, num_local_experts) == v4-style",
                   np.array_equal(self.logits("q3v5"), self.base["qwen3_moe"]))
        self.copy("qwen2_moe-per-expert-single", "q2norm", norm_topk_prob=True)
        self.check("qwen2_moe: norm_topk_prob=true changes the logits (default false is honoured)",
                   rel_diff(self.logits("q2norm"), self.base["qwen2_moe"]) > 1e-6)
        self.copy("olmoe-per-expert-single", "olnoclip", clip_qkv=None)
        self.check("olmoe: clip_qkv=1.5 is active (removing it changes the logits)",
                   rel_diff(self.logits("olnoclip"), self.base["olmoe"]) > 1e-6)

    def test_qwen2_block(self):
        """Qwen2-MoE block == numpy restatement on random rows, for both norm_topk_prob values."""
        for norm in (False, True):
            cfg = M.resolve_config(dict(self.raw_config("qwen2_moe-per-expert-single"), norm_topk_prob=norm))
            W = M.Weights(M.load_checkpoint(self.d("qwen2_moe-per-expert-single")), cfg)
            x = torch.randn(6, 32, generator=torch.Generator().manual_seed(4))
            got = M.qwen2_moe_block(cfg, W, 0, x, M.RouteLog()).numpy()
            want = numpy_qwen2_block({k: v.numpy() for k, v in W.t.items()}, "model.layers.0.mlp", x.numpy(), 2, norm)
            self.check(f"qwen2_moe block (norm_topk_prob={norm}) == numpy restatement, sigmoid-gated shared expert",
                       rel_diff(got, want) < 1e-13, f"rel {rel_diff(got, want):.1e}")

    def test_variants(self):
        """tie_word_embeddings, bf16 storage, attention biases, Mixtral sliding window, YaRN."""
        make_tiny("olmoe", self.d("tied"), tie=True, seed=2)
        tied = M.load_checkpoint(self.d("tied"))
        untied = M.forward(M.resolve_config(dict(self.raw_config("tied"), tie_word_embeddings=False)),
                           {**tied, "lm_head.weight": tied["model.embed_tokens.weight"].clone()}, self.ids)
        self.check("tie_word_embeddings: no lm_head.weight stored; logits == untied with lm_head = embedding",
                   "lm_head.weight" not in tied and np.array_equal(self.logits("tied"), untied))
        for fam in FAMILIES:
            make_tiny(fam, self.d(f"{fam}-bf16"), dtype="bfloat16", layout="fused", seed=7)
            stored = M.read_safetensors(self.d(f"{fam}-bf16", "model.safetensors"))
            lb = self.logits(f"{fam}-bf16")
            rel = rel_diff(lb, self.base[fam])
            self.check(f"{fam}: bfloat16 checkpoint loads and runs (vs float32 weights: rel {rel:.1e})",
                       all(code == "BF16" for _, code in stored.values()) and np.isfinite(lb).all() and rel < 0.2)
        for fam in ("qwen3_moe", "olmoe", "deepseek_v3"):
            make_tiny(fam, self.d(f"{fam}-bias"), attn_bias=True, seed=7)
            self.check(f"{fam}: attention_bias=true runs and matters",
                       rel_diff(self.logits(f"{fam}-bias"), self.base[fam]) > 1e-6)
        make_tiny("mixtral", self.d("mx-sw"), sliding_window=3, seed=7)
        lsw, ref = self.logits("mx-sw"), self.base["mixtral"]
        self.check("mixtral: sliding_window=3 leaves rows 0..2 unchanged and changes later rows",
                   rel_diff(lsw[:3], ref[:3]) <= 1e-13 and rel_diff(lsw[3:], ref[3:]) > 1e-6)
        make_tiny("deepseek_v3", self.d("ds-yarn"), yarn=True, seed=7)
        rope = M.load_config(self.d("ds-yarn"))["rope"]
        cos_y, _ = M.rope_tables(rope, 8, 20)
        cos_0, _ = M.rope_tables(dict(rope, type="default"), 8, 20)
        fac = (0.1 * math.log(4) + 1) / (0.08 * math.log(4) + 1)  # mscale(4, 1.0) / mscale(4, 0.8)
        pos = torch.arange(20.0)[:, None]
        slow = torch.cos(pos * 10000.0 ** (-torch.arange(2, 8, 2) / 8.0) / 4) * fac
        self.check("deepseek_v3 --yarn: dim 0 keeps its frequency, dims 1-3 divided by 4, cos scaled by mscale ratio",
                   torch.allclose(cos_y[:, 0], cos_0[:, 0] * fac, rtol=1e-14, atol=0)
                   and torch.allclose(cos_y[:, 1:4], slow, rtol=1e-13, atol=1e-15)
                   and rel_diff(self.logits("ds-yarn"), self.base["deepseek_v3"]) > 1e-6)

    def test_refusals_and_compare(self):
        self.copy("mixtral-per-expert-single", "bad-type", model_type="llama4")
        self.copy("mixtral-per-expert-single", "bad-act", hidden_act="gelu")
        self.copy("qwen2_moe-per-expert-single", "bad-sw", use_sliding_window=True)
        self.copy("ds-yarn", "bad-yarn", max_position_embeddings=128)
        for src, dst, keep in (("qwen3_moe-per-expert-single", "bad-extra", lambda k: True),
                               ("olmoe-per-expert-single", "bad-missing", lambda k: "q_norm" not in k)):
            self.copy(src, dst)
            path = self.d(dst, "model.safetensors")
            st = OrderedDict((k, v) for k, (v, _) in M.read_safetensors(path).items() if keep(k))
            if dst == "bad-extra":
                st["model.layers.0.mlp.extra.weight"] = torch.zeros(2, 2)
            M.write_safetensors(path, st)
        codes = {tag: self.cli(["logits", "--hf", self.d(tag), "--ids", "1,2,3", "--out", self.d(f"{tag}.npy")])
                 for tag in ("bad-type", "bad-act", "bad-sw", "bad-extra", "bad-missing", "bad-yarn")}
        self.check("refusals (exit 2): unknown model_type, gelu, qwen2 sliding window, unused tensor, "
                   "missing tensor, yarn factor != max_pos/original", all(c == 2 for c in codes.values()), str(codes))
        a = self.base["mixtral"]
        for name, arr in (("a", a), ("b", a * (1 + 1e-9)), ("c", a[:3])):
            np.save(self.d(f"{name}.npy"), arr)
        npy = self.d
        cc = (self.cli(["compare", npy("a.npy"), npy("a.npy")]), self.cli(["compare", npy("a.npy"), npy("b.npy")]),
              self.cli(["compare", npy("a.npy"), npy("b.npy"), "--rtol", "1e-8"]),
              self.cli(["compare", npy("a.npy"), npy("c.npy")]))
        self.check("compare: identical 0, 1e-9 relative 1 (rtol 1e-10) / 0 (rtol 1e-8), shape mismatch 1",
                   cc == (0, 1, 0, 1), str(cc))

    def test_cli_subprocess(self):
        me, out = os.path.abspath(__file__), self.d("cli.npy")
        r1 = subprocess.run([sys.executable, me, "make-tiny", "--family", "qwen2_moe", "--out", self.d("cli"),
                             "--layout", "fused", "--max-shard-bytes", "5000", "--seed", "7"],
                            capture_output=True, text=True)
        r2 = subprocess.run([sys.executable, me, "logits", "--hf", self.d("cli"), "--ids", ",".join(map(str, self.ids)),
                             "--out", out], capture_output=True, text=True)
        ok = r1.returncode == 0 and r2.returncode == 0 and np.array_equal(np.load(out), self.base["qwen2_moe"])
        self.check("CLI subprocess: make-tiny (fused, sharded) + logits == in-process per-expert single", ok,
                   (r1.stderr + r2.stderr).strip().replace("\n", " | ")[:200])


def selftest():
    t0 = time.time()
    st = SelfTest(tempfile.mkdtemp(prefix="hf_reference_selftest_"))
    tests = [st.test_safetensors, st.test_layouts, st.test_dense_mixtral, st.test_mla, st.test_rope_interleave,
             st.test_deepseek_router, st.test_config, st.test_qwen2_block, st.test_variants,
             st.test_refusals_and_compare, st.test_cli_subprocess]
    try:
        for test in tests:
            try:
                test()
            except Exception as e:  # a crash is a failure of that group; later groups still run
                import traceback
                traceback.print_exc()
                st.check(f"{test.__name__} ran to completion", False, f"{type(e).__name__}: {e}")
    finally:
        shutil.rmtree(st.work, ignore_errors=True)
    failed = [n for n, ok in st.results if not ok]
    print(f"{len(st.results) - len(failed)}/{len(st.results)} checks passed in {time.time() - t0:.1f} s")
    return 1 if failed else 0


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

def main(argv=None, quiet=False):
    ap = argparse.ArgumentParser(description="\n\n".join(__doc__.split("\n\n")[:2]),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make-tiny", help="write a tiny random HF checkpoint of a family")
    mk.add_argument("--family", required=True, choices=FAMILIES)
    mk.add_argument("--out", required=True)
    mk.add_argument("--layout", default="per-expert", choices=["per-expert", "fused"],
                    help="per-expert: v4 names; fused: v5 experts.gate_up_proj [E,2I,H] + experts.down_proj [E,H,I]")
    mk.add_argument("--max-shard-bytes", type=int, default=None, help="shard into model-0000K-of-0000M files")
    mk.add_argument("--dtype", default="float32", choices=list(DTYPES))
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument("--tie", action="store_true", help="tie_word_embeddings=true (no lm_head.weight)")
    mk.add_argument("--yarn", action="store_true", help="deepseek_v3: yarn rope_scaling, factor 4 over 16 positions")
    mk.add_argument("--experts", type=int, default=None, help="probe: number of routed experts (default 8)")
    mk.add_argument("--top-k", type=int, default=None, help="probe: num_experts_per_tok (default 2)")
    mk.add_argument("--no-q-lora", action="store_true", help="deepseek_v3: q_lora_rank null (direct q_proj)")
    mk.add_argument("--no-rope-interleave", action="store_true", help="deepseek_v3: rope_interleave false")
    mk.add_argument("--attn-bias", action="store_true", help="qwen3_moe/olmoe/deepseek_v3: attention_bias true")
    mk.add_argument("--sliding-window", type=int, default=None, help="mixtral: sliding_window")
    mk.add_argument("--rms-norm-eps", type=float, default=None,
                    help="probe: rms_norm_eps (deepseek_v3's q_a/kv_a_layernorm stay at 1e-6)")
    lg = sub.add_parser("logits", help="float64 logits [T, vocab] of a HF checkpoint directory")
    lg.add_argument("--hf", required=True)
    lg.add_argument("--ids", required=True, help="comma-separated token ids")
    lg.add_argument("--out", required=True)
    cp = sub.add_parser("compare", help="relative difference of two .npy arrays",
                        description="Prints rel = max|a-b| / max(max|b|, 1e-300) over all entries (B is the "
                                    "reference), max|a-b|, and both shapes; exits 1 if rel > rtol, the shapes "
                                    "differ, or either holds a NaN; 0 otherwise.")
    cp.add_argument("a")
    cp.add_argument("b")
    cp.add_argument("--rtol", type=float, default=1e-10)
    sub.add_parser("selftest", help="run the reference's own checks (exit 1 on any failure)")
    args = ap.parse_args(argv)

    try:
        if args.cmd == "make-tiny":
            files = make_tiny(args.family, args.out, layout=args.layout, max_shard_bytes=args.max_shard_bytes,
                              dtype=args.dtype, seed=args.seed, tie=args.tie, yarn=args.yarn, experts=args.experts,
                              top_k=args.top_k, no_q_lora=args.no_q_lora, attn_bias=args.attn_bias,
                              no_rope_interleave=args.no_rope_interleave, sliding_window=args.sliding_window,
                              rms_norm_eps=args.rms_norm_eps)
            if not quiet:
                print(f"wrote {args.out}/config.json and {', '.join(files)}")
            return 0
        if args.cmd == "logits":
            try:
                ids = [int(x) for x in args.ids.split(",") if x.strip()]
            except ValueError:
                raise M.RefError(f"--ids must be comma-separated integers, got {args.ids!r}")
            log = M.RouteLog()
            logits = compute_logits(args.hf, ids, log)
            np.save(args.out, logits)
            if not quiet:
                msg = f"logits {list(logits.shape)} -> {args.out}"
                if log.expert_margin < math.inf:
                    msg += f"; smallest routing top-k gap {log.expert_margin:.3g}"
                if log.group_margin < math.inf:
                    msg += f", group gap {log.group_margin:.3g}"
                print(msg)
                if min(log.expert_margin, log.group_margin) < 1e-6:
                    print("warning: near-tied routing; a reimplementation may legitimately pick other experts",
                          file=sys.stderr)
            return 0
        if args.cmd == "compare":
            a, b = np.load(args.a), np.load(args.b)
            if a.shape != b.shape:
                if not quiet:
                    print(f"shapes differ: {list(a.shape)} vs {list(b.shape)}  FAIL")
                return 1
            rel = rel_diff(a.astype(np.float64), b.astype(np.float64))
            mad = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
            ok = rel <= args.rtol
            if not quiet:
                print(f"shape {list(a.shape)}  max|a-b| {mad:.3e}  rel {rel:.3e}  rtol {args.rtol:.1e}  "
                      f"{'OK' if ok else 'FAIL'}")
            return 0 if ok else 1
        if args.cmd == "selftest":
            return selftest()
    except M.RefError as e:
        print(f"hf_reference: refused: {e}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
