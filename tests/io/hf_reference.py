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
import sys
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
            import hf_ref_selftest  # the checks live beside, importing this module

            return hf_ref_selftest.selftest()
    except M.RefError as e:
        print(f"hf_reference: refused: {e}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
