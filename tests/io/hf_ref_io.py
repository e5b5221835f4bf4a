"""The files of a Hugging Face checkpoint for the Python reference (hf_ref_models.py re-exports
all of this): a small .safetensors reader/writer, checkpoint loading (single file or sharded by
model.safetensors.index.json, per-expert or fused expert layout), config resolution with each
family's configuration-class defaults, and which layers are MoE. The CLI file's header documents
the families, defaults and sources.

Everything is computed in float64 with torch (CPU), for one sequence at positions 0..T-1, causal,
no padding, following the eager-attention semantics of transformers' modeling files.
"""

import json
import os
import struct

import numpy as np
import torch


class RefError(Exception):
    """A checkpoint or config the reference refuses (unknown, inconsistent, or not implemented)."""


# --------------------------------------------------------------------------------------------
# safetensors: 8-byte little-endian header length, JSON header, row-major little-endian data
# --------------------------------------------------------------------------------------------

_ST_DTYPES = {  # code -> (torch dtype, bytes per element, numpy dtype of the raw bits)
    "F64": (torch.float64, 8, "<f8"),
    "F32": (torch.float32, 4, "<f4"),
    "F16": (torch.float16, 2, "<f2"),
    "BF16": (torch.bfloat16, 2, "<i2"),  # read/written as raw 16-bit words, reinterpreted by torch
}
_TORCH_TO_ST = {v[0]: k for k, v in _ST_DTYPES.items()}


def _tensor_bytes(t):
    t = t.detach().cpu().contiguous()
    if t.dtype not in _TORCH_TO_ST:
        raise RefError(f"safetensors writer: unsupported dtype {t.dtype}")
    code = _TORCH_TO_ST[t.dtype]
    if t.dtype == torch.bfloat16:
        arr = t.view(torch.int16).numpy()
    else:
        arr = t.numpy()
    return code, arr.astype(_ST_DTYPES[code][2], copy=False).tobytes(order="C")


def write_safetensors(path, tensors, metadata=None):
    """tensors: ordered {name: torch.Tensor}; data laid out contiguously in that order, no holes."""
    header, blobs, offset = {}, [], 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, t in tensors.items():
        code, raw = _tensor_bytes(t)
        header[name] = {"dtype": code, "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hjson += b" " * ((-len(hjson)) % 8)  # pad the header so the data starts 8-byte aligned
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for raw in blobs:
            f.write(raw)
    os.replace(tmp, path)
    return offset


def read_safetensors(path):
    """Returns {name: (tensor in its stored dtype, dtype code)}; refuses malformed files."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise RefError(f"{path}: shorter than the 8-byte header length")
    (hlen,) = struct.unpack_from("<Q", data, 0)
    if 8 + hlen > len(data):
        raise RefError(f"{path}: header length {hlen} runs past the end of the file")
    try:
        header = json.loads(data[8:8 + hlen].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RefError(f"{path}: header is not JSON ({e})")
    base, out, spans = 8 + hlen, {}, []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        code = info.get("dtype")
        if code not in _ST_DTYPES:
            raise RefError(f"{path}: tensor {name}: dtype {code} not supported (F64, F32, F16, BF16)")
        tdtype, size, npdt = _ST_DTYPES[code]
        shape = [int(s) for s in info["shape"]]
        begin, end = (int(x) for x in info["data_offsets"])
        numel = int(np.prod(shape)) if shape else 1
        if end - begin != numel * size or begin < 0 or base + end > len(data):
            raise RefError(f"{path}: tensor {name}: offsets {begin}..{end} do not fit shape {shape} {code}")
        arr = np.frombuffer(data, dtype=npdt, count=numel, offset=base + begin).copy()
        t = torch.from_numpy(arr)
        if code == "BF16":
            t = t.view(torch.bfloat16)
        out[name] = (t.reshape(shape), code)
        spans.append((begin, end, name))
    spans.sort()
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise RefError(f"{path}: tensors {n0} and {n1} overlap")
    return out


def save_checkpoint(out_dir, tensors, max_shard_bytes=None):
    """Single model.safetensors, or model-0000K-of-0000M.safetensors + model.safetensors.index.json."""
    meta = {"format": "pt"}
    if not max_shard_bytes:
        write_safetensors(os.path.join(out_dir, "model.safetensors"), tensors, meta)
        return ["model.safetensors"]
    shards, cur, cur_bytes = [], {}, 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if cur and cur_bytes + nbytes > max_shard_bytes:
            shards.append(cur)
            cur, cur_bytes = {}, 0
        cur[name] = t
        cur_bytes += nbytes
    if cur:
        shards.append(cur)
    n = len(shards)
    weight_map, total, files = {}, 0, []
    for k, shard in enumerate(shards, start=1):
        fname = f"model-{k:05d}-of-{n:05d}.safetensors"
        total += write_safetensors(os.path.join(out_dir, fname), shard, meta)
        files.append(fname)
        for name in shard:
            weight_map[name] = fname
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2, sort_keys=True)
        f.write("\n")
    return files


def load_checkpoint(hf_dir):
    """{name: float64 tensor}. Like from_pretrained: model.safetensors first, else the sharded index."""
    single = os.path.join(hf_dir, "model.safetensors")
    index_path = os.path.join(hf_dir, "model.safetensors.index.json")
    raw = {}
    if os.path.exists(single):
        raw = read_safetensors(single)
    elif os.path.exists(index_path):
        with open(index_path) as f:
            index = json.load(f)
        wmap = index.get("weight_map")
        if not isinstance(wmap, dict) or not wmap:
            raise RefError(f"{index_path}: no weight_map")
        for fname in sorted(set(wmap.values())):
            part = read_safetensors(os.path.join(hf_dir, fname))
            for name, val in part.items():
                if wmap.get(name) != fname:
                    raise RefError(f"{fname}: tensor {name} is not mapped to this file by the index")
                if name in raw:
                    raise RefError(f"tensor {name} appears in two shards")
                raw[name] = val
        missing = sorted(set(wmap) - set(raw))
        if missing:
            raise RefError(f"index names tensors absent from their shards: {missing[:5]}")
    else:
        raise RefError(f"{hf_dir}: neither model.safetensors nor model.safetensors.index.json")
    return {name: t.to(torch.float64) for name, (t, _) in raw.items()}


# --------------------------------------------------------------------------------------------
# Config resolution: configuration-class defaults for absent keys, refusal of what is not implemented
# --------------------------------------------------------------------------------------------

# Defaults of the configuration classes (transformers configuration_<family>.py, v4.5x and v5 agree
# on these values); only the keys the forward reads.  Keys that the v5 classes alias
# (attribute_map) are resolved in _expert_count below.
FAMILY_DEFAULTS = {
    "mixtral": dict(
        vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, head_dim=None, hidden_act="silu",
        max_position_embeddings=4096 * 32, rms_norm_eps=1e-5, tie_word_embeddings=False,
        rope_theta=1e6, sliding_window=None, num_experts_per_tok=2, num_local_experts=8),
    "qwen2_moe": dict(
        vocab_size=151936, hidden_size=2048, intermediate_size=5632, num_hidden_layers=24,
        num_attention_heads=16, num_key_value_heads=16, hidden_act="silu", max_position_embeddings=32768,
        rms_norm_eps=1e-6, tie_word_embeddings=False, rope_theta=10000.0, use_sliding_window=False,
        sliding_window=4096, max_window_layers=28, decoder_sparse_step=1, moe_intermediate_size=1408,
        shared_expert_intermediate_size=5632, num_experts_per_tok=4, num_experts=60,
        norm_topk_prob=False, mlp_only_layers=None, qkv_bias=True, layer_types=None),
    "qwen3_moe": dict(
        vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=24,
        num_attention_heads=32, num_key_value_heads=4, head_dim=None, hidden_act="silu",
        max_position_embeddings=32768, rms_norm_eps=1e-6, tie_word_embeddings=False, rope_theta=10000.0,
        attention_bias=False, use_sliding_window=False, sliding_window=4096, decoder_sparse_step=1,
        moe_intermediate_size=768, num_experts_per_tok=8, num_experts=128, norm_topk_prob=False,
        mlp_only_layers=None, layer_types=None),
    "olmoe": dict(
        vocab_size=50304, hidden_size=2048, intermediate_size=2048, num_hidden_layers=16,
        num_attention_heads=16, num_key_value_heads=None, hidden_act="silu", max_position_embeddings=4096,
        rms_norm_eps=1e-5, tie_word_embeddings=False, rope_theta=10000.0, attention_bias=False,
        clip_qkv=None, num_experts_per_tok=8, num_experts=64, norm_topk_prob=False),
    "deepseek_v3": dict(
        vocab_size=129280, hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048,
        num_hidden_layers=61, num_attention_heads=128, num_key_value_heads=128, n_shared_experts=1,
        n_routed_experts=256, routed_scaling_factor=2.5, kv_lora_rank=512, q_lora_rank=1536,
        qk_rope_head_dim=64, v_head_dim=128, qk_nope_head_dim=128, n_group=8, topk_group=4,
        num_experts_per_tok=8, first_k_dense_replace=3, norm_topk_prob=True, hidden_act="silu",
        max_position_embeddings=4096, rms_norm_eps=1e-6, tie_word_embeddings=False, rope_theta=10000.0,
        rope_interleave=True, attention_bias=False),
}

ARCHITECTURES = {
    "mixtral": "MixtralForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM", "olmoe": "OlmoeForCausalLM",
    "deepseek_v3": "DeepseekV3ForCausalLM",
}

# The canonical expert-count key and the aliases the v5 classes map onto it (attribute_map).
_EXPERT_KEYS = {
    "mixtral": ("num_local_experts", ["num_experts"]),
    "qwen2_moe": ("num_experts", []),
    "qwen3_moe": ("num_experts", ["num_local_experts"]),
    "olmoe": ("num_experts", ["num_local_experts"]),
    "deepseek_v3": ("n_routed_experts", ["num_local_experts"]),
}


def _refuse(family, what):
    raise RefError(f"{family}: {what} is not implemented by this reference")


def _expert_count(family, raw, cfg):
    key, aliases = _EXPERT_KEYS[family]
    seen = {k: raw[k] for k in [key] + aliases if k in raw}
    if len(set(json.dumps(v) for v in seen.values())) > 1:
        raise RefError(f"{family}: expert-count keys disagree: {seen}")
    if seen:
        cfg[key] = next(iter(seen.values()))
    cfg["num_experts_total"] = cfg[key]


def _rope_spec(family, raw, cfg):
    """Normalizes v4 (rope_theta + rope_scaling) and v5 (rope_parameters) into one dict."""
    params = raw.get("rope_parameters")
    scaling = raw.get("rope_scaling")
    if params is not None and not isinstance(params, dict):
        raise RefError(f"{family}: rope_parameters must be a dict")
    if params and any(isinstance(v, dict) for v in params.values()):
        _refuse(family, "per-layer-type rope_parameters")
    theta = cfg["rope_theta"]
    if params and "rope_theta" in params:
        if "rope_theta" in raw and float(raw["rope_theta"]) != float(params["rope_theta"]):
            raise RefError(f"{family}: rope_theta and rope_parameters.rope_theta disagree")
        theta = params["rope_theta"]
    spec = dict(scaling) if isinstance(scaling, dict) else dict(params or {})
    rtype = spec.get("rope_type", spec.get("type", "default")) or "default"
    out = {"type": rtype, "theta": float(theta)}
    if spec.get("partial_rotary_factor", raw.get("partial_rotary_factor", 1.0)) != 1.0:
        _refuse(family, "partial_rotary_factor != 1")
    if rtype == "default":
        return out
    if rtype != "yarn":
        _refuse(family, f"rope type {rtype!r}")
    factor = spec.get("factor")
    orig = spec.get("original_max_position_embeddings")
    max_pos = cfg["max_position_embeddings"]
    if factor is None:
        if orig is None:
            raise RefError(f"{family}: yarn needs factor or original_max_position_embeddings")
        factor = max_pos / orig
    if orig is None:
        orig = max_pos
    # v4.5x replaces factor by max_position_embeddings / original when the latter is given; v5 keeps
    # factor.  Only configs on which both agree are accepted.
    if "original_max_position_embeddings" in spec and abs(max_pos / orig - float(factor)) > 1e-12:
        raise RefError(f"{family}: yarn factor {factor} != max_position_embeddings / original "
                       f"({max_pos}/{orig}); transformers v4 and v5 disagree on this config")
    out.update(factor=float(factor), original_max=float(orig),
               beta_fast=float(spec.get("beta_fast") or 32), beta_slow=float(spec.get("beta_slow") or 1),
               mscale=spec.get("mscale"), mscale_all_dim=spec.get("mscale_all_dim"),
               attention_factor=spec.get("attention_factor"), truncate=bool(spec.get("truncate", True)))
    return out


def resolve_config(raw):
    """config.json dict -> resolved dict (defaults applied, derived fields added) or RefError."""
    family = raw.get("model_type")
    if family not in FAMILY_DEFAULTS:
        raise RefError(f"unknown model_type {family!r} (known: {', '.join(FAMILY_DEFAULTS)})")
    cfg = dict(FAMILY_DEFAULTS[family])
    for k in cfg:
        if k in raw:
            cfg[k] = raw[k]
    cfg["family"] = family
    _expert_count(family, raw, cfg)
    H, nh = cfg["hidden_size"], cfg["num_attention_heads"]
    if cfg["hidden_act"] != "silu":
        _refuse(family, f"hidden_act {cfg['hidden_act']!r}")
    if cfg.get("num_key_value_heads") is None:
        cfg["num_key_value_heads"] = nh
    nkv = cfg["num_key_value_heads"]
    if nh % nkv:
        raise RefError(f"{family}: num_attention_heads {nh} not a multiple of num_key_value_heads {nkv}")
    # head_dim: who honours the key differs by family and version; refuse where versions disagree.
    hd_raw = raw.get("head_dim")
    if family in ("mixtral", "qwen3_moe"):
        cfg["head_dim"] = hd_raw or H // nh
    elif family in ("qwen2_moe", "olmoe"):
        if hd_raw not in (None, H // nh):
            _refuse(family, f"head_dim {hd_raw} != hidden_size // num_attention_heads")
        cfg["head_dim"] = H // nh
    else:  # deepseek_v3: rotary dim is qk_rope_head_dim; the class sets head_dim to it
        if hd_raw not in (None, cfg["qk_rope_head_dim"]):
            _refuse(family, f"head_dim {hd_raw} != qk_rope_head_dim")
        cfg["head_dim"] = cfg["qk_rope_head_dim"]
        cfg["qk_head_dim"] = cfg["qk_nope_head_dim"] + cfg["qk_rope_head_dim"]
        if nkv != nh:
            _refuse(family, "num_key_value_heads != num_attention_heads with MLA")
        if cfg["qk_rope_head_dim"] % 2:
            raise RefError(f"{family}: qk_rope_head_dim must be even")
        E, G = cfg["n_routed_experts"], cfg["n_group"]
        if E % G or E // G < 2 or not (1 <= cfg["topk_group"] <= G):
            raise RefError(f"{family}: n_routed_experts {E}, n_group {G}, topk_group {cfg['topk_group']} "
                           "do not form a group-limited router")
        if cfg["topk_group"] * (E // G) < cfg["num_experts_per_tok"]:
            raise RefError(f"{family}: topk_group groups hold fewer experts than num_experts_per_tok")
        if not cfg["n_shared_experts"] or cfg["n_shared_experts"] < 1:
            _refuse(family, f"n_shared_experts {cfg['n_shared_experts']!r}")
        for key, want in (("scoring_func", "sigmoid"), ("topk_method", "noaux_tc"), ("moe_layer_freq", 1)):
            if key in raw and raw[key] != want:
                _refuse(family, f"{key} {raw[key]!r} (HF DeepseekV3 implements only {want!r})")
    if cfg["head_dim"] % 2:
        raise RefError(f"{family}: head_dim must be even for RoPE")
    if family in ("qwen2_moe", "qwen3_moe"):
        if cfg["use_sliding_window"] or "sliding_attention" in (cfg.get("layer_types") or []):
            _refuse(family, "use_sliding_window=true (eager sliding-window semantics differ across versions)")
        cfg["mlp_only_layers"] = list(cfg["mlp_only_layers"] or [])
    if family == "mixtral" and cfg["sliding_window"] is not None and cfg["sliding_window"] < 1:
        raise RefError(f"{family}: sliding_window must be >= 1 or null")
    if family == "olmoe" and cfg["clip_qkv"] is not None and cfg["clip_qkv"] <= 0:
        raise RefError(f"{family}: clip_qkv must be positive or null")
    if not 1 <= cfg["num_experts_per_tok"] <= cfg["num_experts_total"]:
        raise RefError(f"{family}: num_experts_per_tok {cfg['num_experts_per_tok']} out of range")
    cfg["rope"] = _rope_spec(family, raw, cfg)
    cfg["layer_kinds"] = layer_kinds(cfg)
    return cfg


def load_config(hf_dir):
    path = os.path.join(hf_dir, "config.json")
    try:
        with open(path) as f:
            raw = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise RefError(f"{path}: {e}")
    return resolve_config(raw)


def layer_kinds(cfg):
    """'moe' or 'dense' per decoder layer, following each family's decoder-layer constructor."""
    fam, L = cfg["family"], cfg["num_hidden_layers"]
    if fam in ("mixtral", "olmoe"):
        return ["moe"] * L
    if fam == "deepseek_v3":
        return ["dense" if i < cfg["first_k_dense_replace"] else "moe" for i in range(L)]
    step = cfg["decoder_sparse_step"]
    return ["moe" if (i not in cfg["mlp_only_layers"] and cfg["num_experts"] > 0 and (i + 1) % step == 0)
            else "dense" for i in range(L)]
