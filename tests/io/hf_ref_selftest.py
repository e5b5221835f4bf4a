#!/usr/bin/python3
"""hf_ref_selftest.py — the Python reference's own checks (`hf_reference.py selftest`):
independent re-derivations written differently from hf_ref_models (numpy loops per token, naive
routing), cross-layout and cross-sharding identities, and refusals. Each check prints PASS/FAIL.
"""
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict

import numpy as np
import torch

import hf_ref_models as M
from hf_reference import FAMILIES, compute_logits, init_tensor, main, make_tiny, rel_diff

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
        me, out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hf_reference.py"), self.d("cli.npy")
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
