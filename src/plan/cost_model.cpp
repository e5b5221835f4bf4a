// cost_model.cpp — see plan.h: the formulas of the planner's cost model (collective times, bytes
// per collective, compute, pipeline, memory per rank) for one layout.
#include <algorithm>
#include <cmath>
#include <sstream>

#include "hybridmoe/plan.h"
#include "hybridmoe/train.h"

namespace hybridmoe::plan {

namespace {

int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// Whether a group of `size` consecutive ranks leaves one node.
bool size_spans_nodes(int64_t size, int64_t ranks_per_node) {
  return ranks_per_node > 0 && size > ranks_per_node;
}

}  // namespace

std::string to_string(Collective kind) {
  switch (kind) {
    case Collective::kAllToAll:
      return "all_to_all";
    case Collective::kAllGather:
      return "all_gather";
    case Collective::kAllReduce:
      return "all_reduce";
    case Collective::kReduceScatter:
      return "reduce_scatter";
    case Collective::kP2P:
      return "p2p";
  }
  return "?";
}

const LinkFit& MachineSpec::link(Collective kind, bool inter_node) const {
  return (inter_node ? inter : intra)[static_cast<size_t>(kind)];
}

void MachineSpec::set_bandwidth(bool inter_node, double bytes_per_s) {
  TORCH_CHECK(bytes_per_s > 0, "bandwidth must be > 0 bytes/s, got ", bytes_per_s);
  for (auto& l : inter_node ? inter : intra) l.bytes_per_s = bytes_per_s;
}

void MachineSpec::set_latency(bool inter_node, double latency_s) {
  TORCH_CHECK(latency_s >= 0, "latency must be >= 0 s, got ", latency_s);
  for (auto& l : inter_node ? inter : intra) l.latency_s = latency_s;
}

int64_t ModelSpec::moe_layers() const {
  return moe_every > 0 ? n_layers / moe_every : 0;
}

int64_t ModelSpec::expert_params() const {
  return 2 * d_model * expert_hidden + expert_hidden + d_model;
}

ModelSpec ModelSpec::from_train_config(const TrainConfig& c) {
  ModelSpec m;
  m.n_layers = c.n_layers;
  m.d_model = c.d_model;
  m.n_heads = c.n_heads;
  m.d_mlp = c.d_mlp > 0 ? c.d_mlp : 4 * c.d_model;
  m.expert_hidden = c.expert_hidden > 0 ? c.expert_hidden : m.d_mlp;
  m.num_experts = c.num_experts;
  m.top_k = c.top_k;
  m.moe_every = c.moe_every;
  m.seq_len = c.seq_len;
  m.batch_size = c.batch_size;
  m.context = c.context;
  m.vocab = 256;
  m.dtype_bytes = static_cast<int64_t>(c10::elementSize(scalar_type(c.dtype)));
  return m;
}

ExpertPlacement Layout::placement(const ModelSpec& model) const {
  return expert_placement(expert_layout, par.stage_size(), model.num_experts, par.ep, par.etp);
}

std::string Layout::to_string() const {
  std::ostringstream s;
  s << par.to_string() << ".z" << zero << ".r";
  if (is_adaptive()) {
    s << adaptive_r;
  } else {
    s << "-";
  }
  s << ".D" << overlap << ".M" << micro_batches;
  if (a2a_algorithm == A2AAlgorithm::kHierarchical) s << ".hier";
  return s.str();
}

double collective_time(Collective kind, int64_t g, double bytes, const LinkFit& link) {
  TORCH_CHECK(g >= 1, "collective_time: group size must be >= 1, got ", g);
  if (kind == Collective::kP2P) return link.latency_s + bytes / link.bytes_per_s;
  if (g == 1) return 0.0;
  const double steps = static_cast<double>(g - 1);
  const double share = steps / static_cast<double>(g);
  const double factor = kind == Collective::kAllReduce ? 2.0 : 1.0;
  return factor * (steps * link.latency_s + share * bytes / link.bytes_per_s);
}

bool spans_nodes(const ParallelConfig& config, GroupKind kind, int64_t ranks_per_node) {
  if (ranks_per_node <= 0) return false;
  for (const auto& group : all_group_ranks(config, kind))
    if (crosses_nodes(group, ranks_per_node)) return true;
  return false;
}

std::string check_layout(const ModelSpec& m, const Layout& l) {
  std::ostringstream why;
  const auto& p = l.par;
  const std::string par_why = p.check(p.world_size());
  const int64_t W = p.stage_size(), E = m.num_experts;
  if (!par_why.empty()) {
    why << par_why;
  } else if (m.d_model % m.n_heads != 0 || m.n_heads % p.tp != 0 || m.d_mlp % p.tp != 0) {
    why << "tp = " << p.tp << " must divide n_heads " << m.n_heads << " and d_mlp " << m.d_mlp;
  } else if (E % p.ep != 0 || m.expert_hidden % p.etp != 0) {
    why << "ep = " << p.ep << " must divide experts " << E << ", etp = " << p.etp
        << " the expert width " << m.expert_hidden;
  } else if (l.micro_batches < 1 || m.batch_size % (p.dp * l.micro_batches) != 0) {
    why << "dp * micro_batches = " << p.dp * l.micro_batches << " must divide the batch "
        << m.batch_size;
  } else if (m.batch_size / (p.dp * l.micro_batches) * m.seq_len < p.tp) {
    why << "fewer tokens per micro-batch than tp = " << p.tp;
  } else if (p.pp > m.n_layers) {
    why << "pp = " << p.pp << " exceeds the " << m.n_layers << " blocks";
  } else if (l.zero != 0 && l.zero != 1) {
    why << "ZeRO stage must be 0 or 1, got " << l.zero;
  } else if (l.overlap < 1) {
    why << "overlap degree must be >= 1, got " << l.overlap;
  } else if (l.is_adaptive()) {
    const ExpertPlacement placement = l.placement(m);
    if (m.moe_layers() == 0) {
      why << "adaptive r needs MoE layers";
    } else if (!placement.fits() || W < 2) {
      why << "adaptive r places the experts itself: it needs ep = 1, etp = 1, a stage of more "
             "than one rank and one of E, W dividing the other";
    } else if (!placement.is_valid_r(l.adaptive_r)) {
      why << "adaptive r = " << l.adaptive_r << " must be 0 or divide S = " << placement.shards;
    }
  }
  return why.str();
}

LayerTraffic layer_traffic(const ModelSpec& m, const Layout& l) {
  const auto& p = l.par;
  const double b = static_cast<double>(m.dtype_bytes), d = static_cast<double>(m.d_model);
  const int64_t W = p.stage_size(), E = m.num_experts;
  LayerTraffic t;
  t.tokens = m.batch_size / (p.dp * l.micro_batches) * m.seq_len;
  t.slice_tokens = t.tokens / p.tp;
  const double T = static_cast<double>(t.tokens), Ts = static_cast<double>(t.slice_tokens);
  const double k = static_cast<double>(m.top_k), Pe = static_cast<double>(m.expert_params());
  t.tp_all_reduce = T * d * b;
  t.slice_gather = p.tp > 1 ? T * d * b : 0.0;
  t.p2p = p.pp > 1 ? T * d * b : 0.0;
  const int64_t Lp = ceil_div(m.n_layers, p.pp), Lmp = ceil_div(m.moe_layers(), p.pp);
  // Dense parameters of the slowest stage on one rank (gates counted apart).
  const double attn = (4 * d * d + 3 * d) / p.tp + d + 4 * d;  // qkv, proj, two layer norms
  const double f = static_cast<double>(m.d_mlp);
  const double mlp = (2 * d * f + f) / p.tp + d;
  const double emb = static_cast<double>(m.vocab + m.context) * d + 2 * d;
  t.dense_grads = (Lp * attn + (Lp - Lmp) * mlp + emb) * b;
  t.gate_grads = Lmp * d * E * b;
  if (m.moe_layers() == 0) return t;
  if (l.is_adaptive()) {
    const int64_t S = l.placement(m).shards, r = l.adaptive_r;
    if (r == 0) {
      t.weight_gather = E * Pe * b;
      t.weight_group = W;
    } else {
      t.a2a = Ts * k * d * b * r;
      t.a2a_group = W;
      t.weight_gather = S / r > 1 ? Pe / r * b : 0.0;
      t.weight_group = S / r;
    }
  } else {
    t.a2a = p.ep > 1 ? Ts * k * d * b : 0.0;
    t.a2a_group = p.ep;
    t.etp_rows = p.etp > 1 ? p.etp * Ts * k * d * b : 0.0;
    t.expert_grads = Lmp * (E / p.ep) * Pe / p.etp * b;
  }
  return t;
}

MemoryEstimate memory_estimate(const ModelSpec& m, const Layout& l) {
  const auto& p = l.par;
  const double b = static_cast<double>(m.dtype_bytes), d = static_cast<double>(m.d_model);
  const int64_t W = p.stage_size(), E = m.num_experts;
  const LayerTraffic t = layer_traffic(m, l);
  const int64_t Lp = ceil_div(m.n_layers, p.pp), Lmp = ceil_div(m.moe_layers(), p.pp);
  const double Pe = static_cast<double>(m.expert_params());
  MemoryEstimate mem;
  // 1. Parameters and gradients (b bytes each).
  mem.dense_params = t.dense_grads + t.gate_grads;
  const double expert_elems = l.is_adaptive() ? Lmp * E * Pe / W : Lmp * (E / p.ep) * Pe / p.etp;
  mem.expert_params = expert_elems * b;
  mem.params = mem.dense_params + mem.expert_params;
  mem.grads = mem.params;
  // 2. AdamW's two moments; ZeRO 1 shards them over dp (dense) and edp (experts).
  const int64_t expert_replicas = l.is_adaptive() ? 1 : p.edp();
  const double dense_shard = l.zero == 1 ? static_cast<double>(p.dp) : 1.0;
  const double expert_shard = l.zero == 1 ? static_cast<double>(expert_replicas) : 1.0;
  mem.expert_optimizer = 2 * mem.expert_params / expert_shard;
  mem.optimizer = 2 * mem.dense_params / dense_shard + mem.expert_optimizer;
  // 3. Activations of the micro-batches in flight (1F1B keeps up to pp of them on stage 0).
  const double T = static_cast<double>(t.tokens), Ts = static_cast<double>(t.slice_tokens);
  const double seqs = static_cast<double>(m.batch_size / (p.dp * l.micro_batches));
  const double s = static_cast<double>(m.seq_len), f = static_cast<double>(m.d_mlp);
  const double h = static_cast<double>(m.expert_hidden), k = static_cast<double>(m.top_k);
  const double per_block =
      T * b * (6 * d + 4 * d / p.tp) + 2 * seqs * (m.n_heads / p.tp) * s * s * b;
  const double per_dense = T * b * 2 * f / p.tp;
  const double per_moe = Ts * k * b * (3 * d + 2 * h) + T * d * b;
  const double one_mb = Lp * per_block + (Lp - Lmp) * per_dense + Lmp * per_moe;
  const int64_t in_flight = p.pp == 1 ? 1 : std::min(p.pp, l.micro_batches);
  mem.activations = in_flight * one_mb + 2 * T * m.vocab * b;
  if (l.is_adaptive() && l.adaptive_r == 0 && Lmp > 0) mem.activations += 2 * E * Pe * b;
  return mem;
}

Estimate estimate(const ModelSpec& m, const ClusterSpec& cluster, const MachineSpec& machine,
                  const Layout& l) {
  const std::string why = check_layout(m, l);
  TORCH_CHECK(why.empty(), "estimate: layout ", l.to_string(), " cannot run this model: ", why);
  TORCH_CHECK(machine.cores >= 1, "estimate: the machine's cores must be >= 1, got ",
              machine.cores);
  if (l.a2a_algorithm == A2AAlgorithm::kHierarchical) {
    const std::string no = check_hierarchical(m, cluster, l);
    TORCH_CHECK(no.empty(), "estimate: layout ", l.to_string(), " with ranks_per_node ",
                cluster.ranks_per_node, " cannot run the hierarchical all-to-all: ", no);
  }
  const auto& p = l.par;
  const int64_t rpn = cluster.ranks_per_node;
  const LayerTraffic t = layer_traffic(m, l);
  const int64_t W = p.stage_size(), E = m.num_experts;
  const int64_t Lp = ceil_div(m.n_layers, p.pp), Lmp = ceil_div(m.moe_layers(), p.pp);
  const double b = static_cast<double>(m.dtype_bytes);
  const double T = static_cast<double>(t.tokens), Ts = static_cast<double>(t.slice_tokens);
  const double d = static_cast<double>(m.d_model), s = static_cast<double>(m.seq_len);
  const double f = static_cast<double>(m.d_mlp), h = static_cast<double>(m.expert_hidden);
  const double k = static_cast<double>(m.top_k), V = static_cast<double>(m.vocab);
  Estimate est;
  est.layout = l;
  auto link = [&](Collective c, bool inter) -> const LinkFit& { return machine.link(c, inter); };
  auto add = [&](Collective c, double seconds, double times) {
    est.collective_s[static_cast<size_t>(c)] += seconds * times;
    return seconds * times;
  };

  // 1. Compute of one micro-batch in the slowest stage (backward = 2x forward).
  const bool adaptive = l.is_adaptive();
  // Experts whose GEMMs one rank runs: all E when r = 0 gathers them, else those it stores.
  const double local_experts =
      static_cast<double>(adaptive && l.adaptive_r == 0 ? E : l.placement(m).local_experts);
  const double expert_flops = Lmp * 4 * Ts * k * d * h;
  const double flops = Lp * 2 * T * d * 4 * d / p.tp + (Lp - Lmp) * 4 * T * d * f / p.tp +
                       Lmp * 2 * Ts * d * E + expert_flops + 2 * T * d * V;
  const double attention_flops = Lp * 4 * T * s * d / p.tp;
  const double seqs = static_cast<double>(m.batch_size / (p.dp * l.micro_batches));
  const double heads = static_cast<double>(m.n_heads / p.tp);
  const double streamed =
      b * (Lp * (kPassesPerToken * T * d + kPassesPerScore * seqs * heads * s * s) +
           (Lp - Lmp) * kPassesPerHidden * T * f / p.tp +
           Lmp * Ts * k * (kPassesPerExpertHidden * h + kPassesPerRoutedRow * d) +
           kPassesPerLogit * T * V);
  const double calls = Lp * 4 + (Lp - Lmp) * 2 + Lmp * (1 + 2 * local_experts) + 1;
  const double ops = Lp * kOpsPerBlock + Lmp * kOpsPerMoE;
  const double compute_mb =
      3 * (flops / machine.gemm_flops + attention_flops / machine.attention_flops +
           streamed / machine.stream_bytes_per_s + calls * machine.gemm_latency_s +
           ops * machine.op_latency_s);
  const double expert_compute_mb =
      3 * (expert_flops / machine.gemm_flops + Lmp * 2 * local_experts * machine.gemm_latency_s);

  // 2. Communication of one micro-batch.
  const bool tp_inter = spans_nodes(p, GroupKind::kTp, rpn);
  double comm_mb = 0;
  // Adds an all-gather and its mirror reduce-scatter of `bytes` over `ranks`, `times` times.
  auto add_gather_pair = [&](int64_t ranks, double bytes, bool inter, double times) {
    comm_mb += add(
        Collective::kAllGather,
        collective_time(Collective::kAllGather, ranks, bytes, link(Collective::kAllGather, inter)),
        times);
    comm_mb += add(Collective::kReduceScatter,
                   collective_time(Collective::kReduceScatter, ranks, bytes,
                                   link(Collective::kReduceScatter, inter)),
                   times);
  };
  const double tp_ar = collective_time(Collective::kAllReduce, p.tp, t.tp_all_reduce,
                                       link(Collective::kAllReduce, tp_inter));
  comm_mb += add(Collective::kAllReduce, tp_ar, 2.0 * Lp + 2.0 * (Lp - Lmp));
  add_gather_pair(p.tp, t.slice_gather, tp_inter, Lmp);
  double hidden_mb = 0;
  if (t.a2a_group > 1 && Lmp > 0) {
    const double D = static_cast<double>(l.overlap);
    // Per-rank token counts of every expert (a latency-only flat exchange) and D chunks of
    // tokens under the layout's algorithm (flat_a2a_time / hierarchical_a2a_time).
    const double counts = token_a2a_time(l, A2AAlgorithm::kFlat, rpn, 8.0 * E, machine);
    const double a2a_layer = 4 * D * token_a2a_time(l, l.a2a_algorithm, rpn, t.a2a / D, machine);
    const double efficiency = std::clamp(machine.overlap_efficiency, 0.0, 1.0);
    const double hidden_layer =
        efficiency * std::min(a2a_layer, expert_compute_mb / Lmp) * (1 - 1 / D);
    comm_mb += add(Collective::kAllToAll, counts + a2a_layer - hidden_layer, Lmp);
    hidden_mb = hidden_layer * Lmp;
  }
  if (t.etp_rows > 0) {
    add_gather_pair(p.etp, t.etp_rows, spans_nodes(p, GroupKind::kEtp, rpn), 2.0 * Lmp);
  }
  if (t.weight_gather > 0) {
    const bool inter = size_spans_nodes(t.weight_group, rpn) ||
                       (t.weight_group == W && spans_nodes(p, GroupKind::kStage, rpn));
    add_gather_pair(t.weight_group, t.weight_gather, inter, Lmp);
  }
  double p2p_mb = 0;
  if (p.pp > 1)
    p2p_mb = add(Collective::kP2P,
                 collective_time(Collective::kP2P, 2, t.p2p,
                                 link(Collective::kP2P, spans_nodes(p, GroupKind::kPp, rpn))),
                 2.0);

  // 3. The pipeline: M micro-batches plus pp - 1 fill / drain slots, those cheaper where ranks
  //    idle in them give their share of a node's cores to the busy ones (pipeline_slots).
  const double M = static_cast<double>(l.micro_batches);
  const double slot = compute_mb + comm_mb + p2p_mb;
  const double slots = pipeline_slots(p, l.micro_batches, rpn, machine.cores);
  for (auto& c : est.collective_s) c *= slots;  // every slot runs the same collectives
  est.compute_s = compute_mb * M;
  est.comm_s = (comm_mb + p2p_mb) * M;
  est.hidden_s = hidden_mb * M;
  est.bubble_s = slot * (slots - M);

  // 4. Gradient sync once per step (ZeRO 1: reduce-scatter + all-gather of parameters).
  auto sync = [&](GroupKind kind, int64_t g, double bytes) {
    const bool inter = spans_nodes(p, kind, rpn);
    if (l.zero == 1 && kind != GroupKind::kStage) {
      return add(Collective::kReduceScatter,
                 collective_time(Collective::kReduceScatter, g, bytes,
                                 link(Collective::kReduceScatter, inter)),
                 1.0) +
             add(Collective::kAllGather,
                 collective_time(Collective::kAllGather, g, bytes,
                                 link(Collective::kAllGather, inter)),
                 1.0);
    }
    return add(
        Collective::kAllReduce,
        collective_time(Collective::kAllReduce, g, bytes, link(Collective::kAllReduce, inter)),
        1.0);
  };
  est.grad_sync_s = sync(GroupKind::kDp, p.dp, t.dense_grads) +
                    sync(GroupKind::kStage, W, t.gate_grads) +
                    (t.expert_grads > 0 ? sync(GroupKind::kEdp, p.edp(), t.expert_grads) : 0.0);

  // 5. The optimizer, the loss and the gradient norm (two world all-reduces of a few values).
  const double tensors = Lp * 8.0 + (Lp - Lmp) * 4.0 + Lmp * 5.0 + 4.0;
  const bool world_inter = size_spans_nodes(p.world_size(), rpn);
  est.optimizer_s = tensors * kOpsPerParamTensor * machine.op_latency_s +
                    add(Collective::kAllReduce,
                        collective_time(Collective::kAllReduce, p.world_size(), 64.0 * b,
                                        link(Collective::kAllReduce, world_inter)),
                        2.0);

  est.step_s = slots * slot + est.grad_sync_s + est.optimizer_s;
  est.memory = memory_estimate(m, l);
  est.fits = cluster.mem_per_rank_mb <= 0 ||
             est.memory.total() <= cluster.mem_per_rank_mb * 1024.0 * 1024.0;
  return est;
}

}  // namespace hybridmoe::plan
