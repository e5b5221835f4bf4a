"""The Hugging Face tensor names of one sparse-MoE block and their relation to hybridmoe's layout
(shared by hf_blocks.py, the replaced block's state-dict hooks, and hf_load.py, which cuts a
rank's share out of a checkpoint).

A block of family F holds, under its prefix (e.g. model.layers.3.mlp or .block_sparse_moe):
  gate.weight [E, d]                       hybridmoe gate.weight (the same)
  gate.e_score_correction_bias [E]         deepseek_v3: hybridmoe's buffer gate.expert_bias
  per-expert layout (transformers v4), i = the expert:
    experts.i.{gate,up,down}_proj.weight   [h, d], [h, d], [d, h]  (Mixtral: w1, w3, w2)
  fused layout (transformers v5):
    experts.gate_up_proj [E, 2h, d]        gate rows, then up rows
    experts.down_proj [E, d, h]
  shared expert (qwen2_moe: shared_expert, deepseek_v3: shared_experts):
    <s>.{gate,up,down}_proj.weight         [hs, d], [hs, d], [d, hs]
  shared_expert_gate.weight [1, d]         qwen2_moe: hybridmoe's shared_expert_gate
hybridmoe's experts compute x @ w1 with w1 [E, d, h]: w1[e] = gate_proj(e).weight^T, w3[e] = up^T,
w2[e] = down^T ([h, d]). A layer that holds some experts (local_experts, global ids in local order)
and a slice (start, length) of the hidden width holds the matching pieces: per-expert names for its
experts only, with their hidden rows (gate, up) or columns (down); fused tensors of its experts,
gate_up_proj [L, 2 * length, d] (the gate slice, then the up slice). The shared expert is split
over tp like a dense MLP: a layer holding the slice (start, length) of its width hs
(MoE.shared_hidden_range) holds those rows of its gate and up projections and those columns of its
down projection.
"""
import torch

FAMILIES = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v3")
SHARED_PREFIX = {"qwen2_moe": "shared_expert", "deepseek_v3": "shared_experts"}


class Piece:
    """One HF tensor of a layer's share: its name (relative to the block), the shape it has in a
    whole checkpoint, the shape of the share, and how the share is cut from the whole tensor."""

    def __init__(self, name, full_shape, local_shape, cut):
        self.name, self.full_shape, self.local_shape, self.cut = (
            name, tuple(full_shape), tuple(local_shape), cut)


class BlockNames:
    """The HF names of one block of `family` in `layout` ("per-expert" or "fused") for a layer
    with d_model, num_experts E, expert hidden h, the given local experts and hidden slice, and a
    shared expert of width shared_hidden (0: none) of which it holds the slice shared_range
    (start, length; None: all of it)."""

    def __init__(self, family, layout, d_model, num_experts, hidden, local_experts, hidden_range,
                 shared_hidden=0, shared_gate=False, shared_range=None):
        if family not in FAMILIES:
            raise ValueError(f"hf: unknown family {family!r}, expected one of {FAMILIES}")
        if layout not in ("per-expert", "fused"):
            raise ValueError(f"hf: unknown expert layout {layout!r}, expected 'per-expert' or "
                             "'fused'")
        self.family, self.layout = family, layout
        self.d, self.E, self.h = d_model, num_experts, hidden
        self.local = list(local_experts)
        self.start, self.length = hidden_range
        self.shared_hidden, self.shared_gate = shared_hidden, shared_gate
        self.shared_range = tuple(shared_range) if shared_range is not None else (0, shared_hidden)
        self.projections = ("w1", "w3", "w2") if family == "mixtral" else (
            "gate_proj", "up_proj", "down_proj")

    def expert_names(self, e):
        """(gate, up, down) names of expert e in the per-expert layout."""
        return tuple(f"experts.{e}.{p}.weight" for p in self.projections)

    def pieces(self):
        """The Pieces of this layer's share, in the block's order."""
        d, E, h, s, n = self.d, self.E, self.h, self.start, self.length
        L, local = len(self.local), self.local
        out = [Piece("gate.weight", (E, d), (E, d), lambda t: t)]
        if self.family == "deepseek_v3":
            out.append(Piece("gate.e_score_correction_bias", (E,), (E,), lambda t: t))
        if self.layout == "per-expert":
            for e in local:
                g, u, dn = self.expert_names(e)
                out.append(Piece(g, (h, d), (n, d), lambda t: t[s:s + n]))
                out.append(Piece(u, (h, d), (n, d), lambda t: t[s:s + n]))
                out.append(Piece(dn, (d, h), (d, n), lambda t: t[:, s:s + n]))
        else:
            idx = torch.tensor(local)
            out.append(Piece("experts.gate_up_proj", (E, 2 * h, d), (L, 2 * n, d),
                             lambda t: torch.cat([t[idx, s:s + n], t[idx, h + s:h + s + n]], 1)))
            out.append(Piece("experts.down_proj", (E, d, h), (L, d, n),
                             lambda t: t[idx, :, s:s + n]))
        if self.shared_hidden:
            sp, hs = SHARED_PREFIX[self.family], self.shared_hidden
            ss, sn = self.shared_range
            for p in ("gate_proj", "up_proj"):
                out.append(Piece(f"{sp}.{p}.weight", (hs, d), (sn, d), lambda t: t[ss:ss + sn]))
            out.append(Piece(f"{sp}.down_proj.weight", (d, hs), (d, sn),
                             lambda t: t[:, ss:ss + sn]))
        if self.shared_gate:
            out.append(Piece("shared_expert_gate.weight", (1, d), (1, d), lambda t: t))
        return out

    def to_hybridmoe(self, hf):
        """hybridmoe's tensors (by the layer's names) from this share's HF tensors (by name)."""
        out = {"gate.weight": hf["gate.weight"]}
        if self.family == "deepseek_v3":
            out["gate.expert_bias"] = hf["gate.e_score_correction_bias"]
        if self.layout == "per-expert":
            for k, role in enumerate(("w1", "w3", "w2")):
                out[f"experts.{role}"] = torch.stack(
                    [hf[self.expert_names(e)[k]].t() for e in self.local])
        else:
            gu, n = hf["experts.gate_up_proj"], self.length
            out["experts.w1"] = gu[:, :n].transpose(1, 2)
            out["experts.w3"] = gu[:, n:].transpose(1, 2)
            out["experts.w2"] = hf["experts.down_proj"].transpose(1, 2)
        if self.shared_hidden:
            sp = SHARED_PREFIX[self.family]
            for role, p in (("w1", "gate_proj"), ("w3", "up_proj"), ("w2", "down_proj")):
                out[f"shared_expert.{role}"] = hf[f"{sp}.{p}.weight"].t().unsqueeze(0)
        if self.shared_gate:
            out["shared_expert_gate"] = hf["shared_expert_gate.weight"]
        return out

    def to_hf(self, ours):
        """This share's HF tensors (contiguous) from hybridmoe's (by the layer's names)."""
        out = {"gate.weight": ours["gate.weight"]}
        if self.family == "deepseek_v3":
            out["gate.e_score_correction_bias"] = ours["gate.expert_bias"]
        if self.layout == "per-expert":
            for i, e in enumerate(self.local):
                for name, role in zip(self.expert_names(e), ("w1", "w3", "w2")):
                    out[name] = ours[f"experts.{role}"][i].t()
        else:
            out["experts.gate_up_proj"] = torch.cat(
                [ours["experts.w1"], ours["experts.w3"]], 2).transpose(1, 2)
            out["experts.down_proj"] = ours["experts.w2"].transpose(1, 2)
        if self.shared_hidden:
            sp = SHARED_PREFIX[self.family]
            for role, p in (("w1", "gate_proj"), ("w3", "up_proj"), ("w2", "down_proj")):
                out[f"{sp}.{p}.weight"] = ours[f"shared_expert.{role}"][0].t()
        if self.shared_gate:
            out["shared_expert_gate.weight"] = ours["shared_expert_gate"]
        return {k: v.detach().contiguous() for k, v in out.items()}
