// plan.h — the layout planner behind `hmoe plan`: a cost model of one training step (compute,
// every collective, pipeline bubble) and of peak memory per rank, the enumeration of every layout
// (tp, dp, pp, ep, etp, ZeRO stage, adaptive r, overlap degree D, micro-batches), the ranking, the
// machine probe (GEMM FLOP/s, collective latency and bandwidth by group size, measured over c10d)
// and the measurement of the top layouts with the trainer.
//
// ---- The cost model (the specification of tests/plan) -----------------------------------------
// Notation: b bytes per element (dtype), d = d_model, f = dense MLP width, h = expert width,
// E experts, k = top_k, V = 256 (byte vocabulary), s = seq_len, L = blocks, Lm = MoE blocks
// (every moe_every-th), B = global batch (sequences), W = tp * dp (ranks of a stage).
// Tokens of one micro-batch on one dp rank: T = B * s / (dp * M); of one tp slice: Ts = T / tp.
// Blocks of the slowest stage: Lp = ceil(L / pp), of which Lmp = ceil(Lm / pp) are MoE blocks.
//
// Collectives (alpha-beta, ring algorithms) over g ranks, n bytes, latency a, bandwidth B:
//   all-reduce     (n = buffer)          2 (g-1) a + 2 (g-1)/g * n / B
//   all-gather     (n = gathered output) (g-1) a + (g-1)/g * n / B
//   reduce-scatter (n = full input)      (g-1) a + (g-1)/g * n / B
//   all-to-all     (n = send buffer)     (g-1) a + (g-1)/g * n / B  (inside one node; the
//                                        token all-to-all across nodes: below)
//   p2p            (n = message)         a + n / B
//   g = 1 costs nothing. a and B are per collective kind, intra-node when every group of that
//   kind lies in one node (ranks_per_node consecutive ranks), else inter-node.
// Token all-to-all (Layout::a2a_algorithm) over its exchange group (ep; the stage in the adaptive
// layout) of P ranks, n = a rank's send buffer, a and B the all-to-all figures intra- (i) or
// inter-node (o); the slowest rank's time:
//   flat: one message of n / P bytes to each of the P - 1 others, the G - 1 to the group's other
//     members on the rank's own node over the intra-node figures, the P - G others inter-node:
//       (G-1) (a_i + n / (P B_i)) + (P-G) (a_o + n / (P B_o))
//     (inside one node, G = P: the all-to-all above; one member per node, G = 1: the same at the
//     inter-node figures).
//   hierarchical (Tutel's 2DH, hybridmoe/detail/hierarchical_all_to_all.h; G members on each of
//     N = P / G nodes; only where the layer runs it: D = 1, G > 1, N > 1, every node holding G
//     members in group-rank order — check_hierarchical):
//       0. the node's send counts, P int64 to each local peer: (G-1) (a_i + 8 P / B_i)
//       1. inside the node, to local rank l the rows for local index l of every node (n / G
//          bytes to each local peer): (G-1) (a_i + n / (G B_i))
//       2. across nodes, to the rank of the same local index on each other node the rows its node
//          has for it (fewer, larger messages: n / N bytes each): (N-1) (a_o + n / (N B_o))
//       3. the rows' rearrangements (three concatenations: the blocks of steps 1 and 2 and the
//          result, each reading and writing n bytes): kPassesPerHierarchicalExchange n /
//          stream_bytes_per_s
//     The same bytes cross nodes as flat ((P-G)/P n = (N-1)/N n) in N - 1 messages instead of
//     P - G, for G - 1 more intra-node messages (step 0), n (G-1)(1/G - 1/P) more intra-node
//     bytes and step 3.
//   Where the members' G differ (nodes holding different numbers of them: flat only) the largest
//   time counts. The per-expert token counts (a flat all-to-all of 8 E bytes) precede the
//   exchanges once per MoE layer.
// Bytes per micro-batch (LayerTraffic):
//   tp all-reduce (attention out; dense MLP out)  T d b each; 1 fwd + 1 bwd (f's conjugate) per
//     attention and per dense MLP.
//   slice gather of the MoE output over tp        T d b (all-gather fwd, reduce-scatter bwd).
//   token all-to-all over ep                      Ts k d b (dispatch, combine; x2 in backward:
//     4 per MoE layer, each under the layout's algorithm); adaptive r >= 1: over the stage (W
//     ranks) with Ts k d b r (each token goes to r ranks), r = 0: none.
//   etp all-gather / reduce-scatter of rows       etp Ts k d b (1 + 1 fwd, 1 + 1 bwd).
//   adaptive weight all-gather                    r = 0: E Pe b over W; r >= 1: Pe b / r over
//     S / r ranks (S = max(1, W / E), Pe = 2 d h + h + d), fwd; its reduce-scatter in bwd.
//   pipeline p2p                                  T d b per boundary, fwd and bwd.
// Gradients per step (once, after the last micro-batch): dense Pd b over dp, gates E d b over
// the stage, experts Px b over edp (adaptive: none, the weight reduce-scatter already summed
// them). ZeRO 0: all-reduce; ZeRO 1: reduce-scatter of the gradients + all-gather of the
// updated parameters (same ring bytes, twice the latency terms).
// Compute per micro-batch of the slowest stage, forward (backward = 2x forward):
//   GEMM FLOPs: attention projections 2 T d (3d + d)/tp, dense MLP 4 T d f / tp, gate 2 Ts d E,
//     experts 4 Ts k d h (balanced load: the same on every rank for every layout), head 2 T d V.
//   Attention FLOPs (batched small GEMMs, q k^T and p v per sequence and head): 4 T s d / tp.
//   Streamed bytes (elementwise operators, each pass reading or writing a tensor once), with
//     n = B / (dp M) sequences and H heads: per block kPassesPerToken T d b (norms, residuals,
//     head reshapes) + kPassesPerScore n (H/tp) s^2 b (the mask bias, softmax); per dense MLP
//     kPassesPerHidden T (f/tp) b (activation); per MoE layer Ts k (kPassesPerExpertHidden h +
//     kPassesPerRoutedRow d) b (activation, permutation, weighted combine); the head
//     kPassesPerLogit T V b (log-softmax, loss).
//   time = 3 * (gemm / gemm_flops + attention / attention_flops + streamed / stream_bytes_per_s
//   + gemm_calls * gemm_latency + ops * op_latency), with gemm_calls = 4 per attention, 2 per
//   dense MLP, 1 + 2 * local experts per MoE layer (all E at r = 0), 1 for the head; ops =
//   kOpsPerBlock per block + kOpsPerMoE per MoE layer.
// Overlap degree D (token all-to-all in D chunks): the all-to-all latency terms are paid D times
// and e * min(a2a, expert compute) * (1 - 1/D) of it is hidden, e the machine's overlap
// efficiency (the share of an all-to-all that runs hidden behind compute when both are issued
// together: 1 where communication has its own engine, near 0 where it competes for the cores).
// Pipeline (1F1B): step = slots * (t_mb + 2 p2p) + grad sync + optimizer with slots = M + pp - 1,
// so the bubble is the fraction (pp - 1) / (M + pp - 1), where every node has at least as many
// cores as ranks. Ranks sharing a node's c < n cores (one thread each; the figures measured with
// every rank busy): a slot with a busy ranks on a node takes f(a) = min(1, c/n) / min(1, c/a) of
// an all-busy slot there (ranks idle in the bubble give their cores to the busy ones), slots =
// the sum over the M + pp - 1 slots of the slowest node's f (pipeline_slots; src/plan/
// core_sharing.cpp has the reasoning). Optimizer: kOpsPerParamTensor * op_latency per
// parameter tensor, plus 2 world all-reduces of a few values (loss, norm).
// Peak memory per rank (MemoryEstimate): params + grads (b each) + AdamW moments (2 b each;
// ZeRO 1: dense moments / dp, expert moments / edp — ep*etp/tp times larger a shard than dp
// would give) + activations of min(pp, M) in-flight micro-batches (1 when pp = 1):
//   per block T b (6d + 4d/tp + 2f/tp [dense] ) + 2 (B/(dp M)) (heads/tp) s^2 b,
//   per MoE layer Ts k b (3 d + 2 h) + T d b, plus the logits 2 T V b;
// adaptive r = 0 also holds one MoE layer's gathered weights and their gradients (2 E Pe b).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "hybridmoe/dispatcher.h"
#include "hybridmoe/parallel.h"
#include "hybridmoe/placement.h"

namespace hybridmoe {

struct TrainConfig;

namespace plan {

/// Non-GEMM operator calls per transformer block and per MoE layer in a forward pass (layer
/// norms, softmax, masks, activations, routing, permutation, index bookkeeping).
inline constexpr double kOpsPerBlock = 24;
inline constexpr double kOpsPerMoE = 40;
/// Operator calls of AdamW (and clipping) per parameter tensor.
inline constexpr double kOpsPerParamTensor = 12;
/// Passes of elementwise operators over each kind of tensor in a forward pass (see above).
inline constexpr double kPassesPerToken = 16;        ///< [T, d] per block
inline constexpr double kPassesPerScore = 4;         ///< [n, H / tp, s, s] per block
inline constexpr double kPassesPerHidden = 2;        ///< [T, f / tp] per dense MLP
inline constexpr double kPassesPerExpertHidden = 2;  ///< [Ts k, h] per MoE layer
inline constexpr double kPassesPerRoutedRow = 6;     ///< [Ts k, d] per MoE layer
inline constexpr double kPassesPerLogit = 3;         ///< [T, V] for the head
/// Passes over a rank's send buffer that the hierarchical all-to-all adds to the flat one (three
/// concatenations, each reading and writing it once; see above).
inline constexpr double kPassesPerHierarchicalExchange = 6;

/// The collective kinds the machine figures are given for.
enum class Collective { kAllToAll = 0, kAllGather, kAllReduce, kReduceScatter, kP2P };
inline constexpr int kNumCollectives = 5;
std::string to_string(Collective kind);

/// Latency (seconds per ring step) and bandwidth (bytes per second) of one collective kind.
struct LinkFit {
  double latency_s = 400e-6;
  double bytes_per_s = 0.4e9;
};

/// The machine: GEMM throughput per rank and each collective's figures intra- and inter-node.
/// The defaults are this project's CPU machines (2 cores, Gloo over loopback, 4 ranks of one
/// thread each): the medians, rounded, of six to thirteen `hmoe plan --nproc 4 --probe` runs. A
/// cluster that is not at hand is described by flags, the ranks at hand by probe_machine().
struct MachineSpec {
  double gemm_flops = 3e10;      ///< sustained GEMM FLOP/s of one rank (all ranks busy)
  double gemm_latency_s = 3e-6;  ///< fixed cost of one GEMM call
  /// FLOP/s of attention's batched small GEMMs (forward and backward of q k^T and p v).
  double attention_flops = 4.8e9;
  /// Bytes per second that elementwise operators read plus write on one rank.
  double stream_bytes_per_s = 1.8e9;
  double op_latency_s = 25e-6;  ///< fixed cost of one non-GEMM operator call
  /// Share of an all-to-all hidden behind compute issued with it (0..1; see the overlap above).
  double overlap_efficiency = 0.0;
  /// Cores of one node, which its ranks (one thread each) share; fewer than the ranks of a node
  /// make a pipeline's fill and drain cheaper (pipeline_slots). The probe: local_cores().
  int64_t cores = 2;
  /// Per Collective kind: all-to-all, all-gather, all-reduce, reduce-scatter, p2p.
  std::array<LinkFit, kNumCollectives> intra{LinkFit{300e-6, 0.5e9}, LinkFit{600e-6, 0.3e9},
                                             LinkFit{500e-6, 0.45e9}, LinkFit{440e-6, 0.3e9},
                                             LinkFit{260e-6, 0.8e9}},
      inter = intra;
  std::string source = "defaults";  ///< "defaults", "flags", "probe" or "probe+flags"

  const LinkFit& link(Collective kind, bool inter_node) const;
  /// Sets the bandwidth (or latency) of every collective kind, intra- or inter-node.
  void set_bandwidth(bool inter_node, double bytes_per_s);
  void set_latency(bool inter_node, double latency_s);
};

/// The model and the batch of one training step.
struct ModelSpec {
  int64_t n_layers = 4, d_model = 64, n_heads = 4;
  int64_t d_mlp = 256;          ///< dense MLP width (resolved: never 0)
  int64_t expert_hidden = 256;  ///< expert width (resolved)
  int64_t num_experts = 4, top_k = 2, moe_every = 2;
  int64_t seq_len = 64, batch_size = 16;  ///< batch: sequences per step over all dp ranks
  int64_t context = 64, vocab = 256;
  int64_t dtype_bytes = 4;

  int64_t moe_layers() const;
  /// Parameters of one expert (two matrices and two biases).
  int64_t expert_params() const;
  /// The model of a `hmoe train` configuration (d_mlp / expert_hidden 0 resolved).
  static ModelSpec from_train_config(const TrainConfig& config);
};

/// The ranks: how many, how many per node (0: all on one node), memory per rank (0: unlimited).
struct ClusterSpec {
  int64_t world = 4;
  int64_t ranks_per_node = 0;
  double mem_per_rank_mb = 0.0;
};

/// One candidate layout.
struct Layout {
  ParallelConfig par;
  int64_t zero = 0;  ///< ZeRO stage: 0 or 1 (optimizer state sharded over dp / edp)
  /// kFixed: the (ep, etp) experts; kAdaptive: Tutel's layout at degree adaptive_r (then
  /// ep = etp = 1: the layer stores E / W experts or a 1 / S slice of one per rank, storage
  /// ep = min(E, W); see ExpertPlacement).
  ExpertLayout expert_layout = ExpertLayout::kFixed;
  /// With kAdaptive: r in {0} ∪ divisors(S); unused (0) with kFixed.
  int64_t adaptive_r = 0;
  int64_t overlap = 1;  ///< a2a overlap degree D (1: off)
  int64_t micro_batches = 1;
  /// How the token all-to-all moves its rows; kHierarchical only where check_hierarchical allows
  /// it (rank_layouts weighs both there and keeps the faster).
  A2AAlgorithm a2a_algorithm = A2AAlgorithm::kFlat;
  bool is_adaptive() const { return expert_layout == ExpertLayout::kAdaptive; }
  /// Where the experts live on a stage of this layout for `model` (placement.h).
  ExpertPlacement placement(const ModelSpec& model) const;
  /// "tp2.dp2.pp1.ep2.etp1.z0.r-.D1.M1" (r-: fixed experts), ".hier" appended for the
  /// hierarchical all-to-all.
  std::string to_string() const;
  bool operator==(const Layout& o) const {
    return par == o.par && zero == o.zero && expert_layout == o.expert_layout &&
           adaptive_r == o.adaptive_r && overlap == o.overlap && micro_batches == o.micro_batches &&
           a2a_algorithm == o.a2a_algorithm;
  }
};

/// Byte counts of one micro-batch (and of the per-step gradient sync) for one rank.
struct LayerTraffic {
  int64_t tokens = 0;        ///< T: tokens of a micro-batch on a dp rank
  int64_t slice_tokens = 0;  ///< Ts = T / tp
  double tp_all_reduce = 0;  ///< one tp all-reduce buffer (T d b)
  double slice_gather = 0;   ///< the MoE output gather over tp (T d b)
  double a2a = 0;            ///< one token all-to-all's send buffer
  int64_t a2a_group = 1;     ///< its group size
  double etp_rows = 0;       ///< one etp all-gather output / reduce-scatter input
  double weight_gather = 0;  ///< adaptive: gathered expert weights per MoE layer
  int64_t weight_group = 1;  ///< their group size
  double p2p = 0;            ///< one pipeline message
  double dense_grads = 0;    ///< per-step gradient bytes reduced over dp
  double gate_grads = 0;     ///< over the stage
  double expert_grads = 0;   ///< over edp (0 in adaptive mode)
};

/// Peak memory per rank, in bytes.
struct MemoryEstimate {
  double params = 0, grads = 0, optimizer = 0, activations = 0;
  double dense_params = 0, expert_params = 0;  ///< the parts of params
  double expert_optimizer = 0;                 ///< the experts' share of optimizer
  double total() const { return params + grads + optimizer + activations; }
};

/// The prediction for one layout.
struct Estimate {
  Layout layout;
  double step_s = 0;
  double compute_s = 0;    ///< all micro-batches, slowest stage
  double comm_s = 0;       ///< exposed communication of all micro-batches
  double hidden_s = 0;     ///< communication hidden by the overlap
  double bubble_s = 0;     ///< pipeline idle time
  double grad_sync_s = 0;  ///< dp / edp / stage gradient sync (and ZeRO all-gather)
  double optimizer_s = 0;
  /// Seconds per step spent in each collective kind (exposed share for the all-to-all).
  std::array<double, kNumCollectives> collective_s{};
  MemoryEstimate memory;
  bool fits = true;
};

// ---- the formulas ------------------------------------------------------------------------------

/// Time of one collective of `bytes` over `group_size` ranks (formulas above).
double collective_time(Collective kind, int64_t group_size, double bytes, const LinkFit& link);

/// Whether some group of `kind` holds ranks of more than one node (ranks_per_node <= 0: never).
bool spans_nodes(const ParallelConfig& config, GroupKind kind, int64_t ranks_per_node);

/// One flat token all-to-all of `bytes` per rank over `group_size` ranks, `on_node` of them
/// (the sender included) on the sender's node: (G-1) (a_i + n/(P B_i)) + (P-G) (a_o + n/(P B_o)).
double flat_a2a_time(int64_t group_size, int64_t on_node, double bytes, const LinkFit& intra,
                     const LinkFit& inter);

/// One hierarchical token all-to-all of `bytes` per rank over `group_size` ranks, `per_node` of
/// them on each node: steps 0-3 above (`stream_bytes_per_s` for the rearrangements).
double hierarchical_a2a_time(int64_t group_size, int64_t per_node, double bytes,
                             const LinkFit& intra, const LinkFit& inter, double stream_bytes_per_s);

/// The group a layout's token all-to-all runs over: the stage in the adaptive layout, else ep.
GroupKind exchange_group(const Layout& layout);

/// One token all-to-all of `bytes` per rank over the layout's exchange group under `algorithm`
/// on nodes of `ranks_per_node` consecutive ranks (<= 0: one node): the slowest member's time.
/// kHierarchical needs check_hierarchical's conditions on the groups (an error otherwise).
double token_a2a_time(const Layout& layout, A2AAlgorithm algorithm, int64_t ranks_per_node,
                      double bytes, const MachineSpec& machine);

/// "" where the MoE layer runs this layout's token all-to-all hierarchical on the cluster's nodes,
/// else why not: the layout has no token all-to-all, overlap degree D > 1, the exchange group lies
/// in one node or has one member per node (the layer runs it flat there), or a node holds a
/// different number of its members or out of group-rank order (the layer refuses). (Replication,
/// which the layer also refuses with it, is not part of a Layout.)
std::string check_hierarchical(const ModelSpec& model, const ClusterSpec& cluster,
                               const Layout& layout);

/// "" if the model and batch can run on the layout, else why not (divisibility, sizes).
std::string check_layout(const ModelSpec& model, const Layout& layout);

LayerTraffic layer_traffic(const ModelSpec& model, const Layout& layout);
MemoryEstimate memory_estimate(const ModelSpec& model, const Layout& layout);
Estimate estimate(const ModelSpec& model, const ClusterSpec& cluster, const MachineSpec& machine,
                  const Layout& layout);

// ---- ranks sharing cores (src/plan/core_sharing.cpp) -------------------------------------------

/// The cores this process may run on (cpu_runtime.h's usable_cores(): the affinity mask's count,
/// else std::thread::hardware_concurrency(), at least 1).
int64_t local_cores();

/// The time of a slot in which `busy` of a node's `ranks` ranks run, over its time with all of
/// them running, on `cores` cores: min(1, cores / ranks) / min(1, cores / busy); 0 when busy = 0.
double core_share_factor(int64_t busy, int64_t ranks, int64_t cores);

/// The pipeline's time in all-busy slots (formula above): M + pp - 1 where every node has at least
/// as many cores as ranks, down to M where the busy ranks of every fill and drain slot fill their
/// node's cores. Nodes of `ranks_per_node` consecutive ranks (<= 0: one node), `cores` each.
double pipeline_slots(const ParallelConfig& par, int64_t micro_batches, int64_t ranks_per_node,
                      int64_t cores);

// ---- enumeration and ranking -------------------------------------------------------------------

/// What to enumerate.
struct PlanOptions {
  std::vector<int64_t> zero_stages = {0, 1};
  std::vector<int64_t> overlap_degrees = {1, 2, 4};
  int64_t max_micro_batches = 8;  ///< micro-batch counts: powers of two up to this
  bool adaptive = true;           ///< include adaptive-r layouts
  bool keep_unfit = false;        ///< keep layouts over the memory limit (ranked after the rest)
  /// Token all-to-all algorithms to weigh: rank_layouts estimates each layout under those of them
  /// the layer can run there (kHierarchical: check_hierarchical) and keeps the fastest; a layout
  /// where none of them can run gets kFlat (the layer's only exchange there).
  std::vector<A2AAlgorithm> a2a_algorithms = {A2AAlgorithm::kFlat, A2AAlgorithm::kHierarchical};
};

/// Every layout of valid_parallel_configs(world) the model can run, times every ZeRO stage
/// (1 only where something is replicated: dp > 1 or edp > 1), adaptive r (fixed, and on the
/// configs with ep = etp = 1 and W > 1 — adaptive mode places the experts itself, storage
/// ep = min(E, W) — r in {0} ∪ divisors(S), leaving out r = 1 when S = 1: that is the fixed
/// ep = W layout), overlap degree (only where a token all-to-all exists) and micro-batch count
/// (powers of two up to max_micro_batches dividing B / dp).
std::vector<Layout> enumerate_layouts(const ModelSpec& model, int64_t world,
                                      const PlanOptions& options = PlanOptions());

/// Estimates of every enumerated layout, each under the fastest of options.a2a_algorithms that
/// the layer can run on the cluster's nodes (ties: flat), fitting ones first, each part sorted by
/// predicted time.
std::vector<Estimate> rank_layouts(const ModelSpec& model, const ClusterSpec& cluster,
                                   const MachineSpec& machine,
                                   const PlanOptions& options = PlanOptions());

/// The ranking as one JSON line {"layouts": [{tp, dp, pp, ep, etp, zero, adaptive_r, overlap,
/// micro_batches, a2a_algorithm, predicted_step_ms, peak_mem_mb, fits}, ...]} (adaptive_r:
/// json_adaptive_r; a2a_algorithm: "flat" or "hierarchical").
std::string to_json(const std::vector<Estimate>& ranking);
/// The "adaptive_r" of a layout in the JSON outputs: r, or -1 for the fixed layout (the JSON's
/// spelling of kFixed, kept for its readers).
int64_t json_adaptive_r(const Layout& layout);
/// The ranking as a text table (the first `rows` rows; <= 0: all).
std::string to_table(const std::vector<Estimate>& ranking, int64_t rows = 0);

/// The layout a training configuration runs: its tp, dp, pp, ep, etp, zero_stage, expert_layout
/// with adaptive_r, a2a_overlap_degree, a2a_algorithm and micro_batches (apply_layout's inverse).
/// An error for adaptive_r auto or every-step, which no one layout describes.
Layout layout_of(const TrainConfig& config);

/// Sets the layout keys of a training configuration: tp, dp, pp, ep, etp, nproc, micro_batches,
/// and where the layout departs from their defaults zero_stage, expert_layout with adaptive_r,
/// a2a_overlap_degree, a2a_algorithm. Returns "" or why the trainer cannot run this layout
/// (check_config's reason).
std::string apply_layout(TrainConfig& config, const Layout& layout);

// ---- measurement on the ranks at hand ----------------------------------------------------------

/// Measures the machine on this process's ranks (collective over the world; every rank returns
/// the same figures): GEMM FLOP/s and call latency at one thread per rank, all ranks at once and
/// each timed over back-to-back calls (so that ranks sharing cores see their share); attention
/// FLOP/s (forward and backward of the masked, scaled q k^T and of p v for 32 sequences of 64
/// tokens, 4 heads of 16, as the model computes them);
/// streamed bytes per second (an activation and an add over 2 MiB tensors); operator
/// latency (forward + backward of a chain of small autograd operators / 3 per op); latency and
/// bandwidth of each collective, fitted by least squares to the formulas above over group sizes
/// 2..world (divisors) and a few message sizes; the overlap efficiency, from an all-to-all over
/// the world timed alone, GEMMs of about the same time alone, and both issued together:
/// (t_a2a + t_gemm - t_both) / min(t_a2a, t_gemm), clamped to [0, 1]. The inter-node figures
/// are set equal to the intra-node ones (one node); the cores, local_cores() averaged over the
/// ranks (rounded).
MachineSpec probe_machine(dist::World& world);

/// What `layout = "auto"` chose.
struct AutoLayout {
  Estimate estimate;    ///< the chosen layout and its prediction
  size_t position = 0;  ///< its place in the ranking (0-based)
  size_t ranked = 0;    ///< layouts ranked
};

/// `layout = "auto"`: sets config's layout keys (apply_layout) to the first layout of the ranking
/// for config.nproc ranks on `machine` that the trainer can run. Raises an error naming the model
/// and the world when none can.
AutoLayout apply_auto_layout(TrainConfig& config, const MachineSpec& machine);

/// One measured layout.
struct Measurement {
  Layout layout;
  double predicted_ms = 0, measured_ms = 0;
  int64_t predicted_rank = 0;  ///< its position in the ranking (0-based)
};

/// What measure_layouts runs.
struct MeasureOptions {
  int64_t count = 4;    ///< layouts to run
  int64_t steps = 8;    ///< optimizer steps per run (the first is not timed)
  int64_t rounds = 2;   ///< runs of each layout, interleaved; the fastest round counts
  bool spread = false;  ///< false: the top `count` runnable layouts; true: `count` runnable
                        ///< layouts evenly spaced over the runnable ranking (first and last in)
  /// Also run the base configuration's own layout (layout_of) where the ranking holds it and the
  /// trainer can run it, in its place by predicted time (an error otherwise).
  bool include_base = false;
};

/// Runs layouts of `ranking` that the trainer can run (model keys from `base`; output in a
/// temporary directory) and returns for each the fastest round's median step time after the
/// first step. Layouts ranked above the last one chosen that the trainer cannot run are reported
/// through `skipped` ("layout: why"). Collective over the world.
std::vector<Measurement> measure_layouts(const TrainConfig& base,
                                         const std::vector<Estimate>& ranking,
                                         const MeasureOptions& options, dist::World& world,
                                         std::vector<std::string>* skipped);

/// Spearman's rank correlation of two equally long series (average ranks for ties).
double spearman(const std::vector<double>& a, const std::vector<double>& b);

}  // namespace plan
}  // namespace hybridmoe
