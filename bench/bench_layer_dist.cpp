// bench_layer_dist.cpp — see bench_layer_dist.h.
#include "bench_layer_dist.h"

#include <algorithm>
#include <chrono>
#include <functional>
#include <tuple>

#include <torch/torch.h>

#include "bench_common.h"
#include "bench_skew.h"
#include "hybridmoe/collectives.h"
#include "hybridmoe/comm_stats.h"
#include "hybridmoe/detail/hierarchical_all_to_all.h"
#include "hybridmoe/moe.h"

namespace hybridmoe::bench {

namespace {
// One variant of a sweep: a step function and what each timed step cost.
struct Variant {
  Variant(std::function<void()> s) : step(std::move(s)) {}  // implicit: {lambda} builds one
  std::function<void()> step;
  std::vector<double> ms, comm_ms, a2a_ms, bytes;
  std::vector<double> cross_bytes, cross_messages;  // the layer's forward exchanges across nodes
};

// Times the variants interleaved (one step of each in turn, `iters` rounds after `warmup`), each
// step after a barrier; communication is the comm_stats() growth during the step (time blocked
// in collectives; the asynchronous all-to-alls count only their waits).
void time_interleaved(std::vector<Variant>& variants, int warmup, int iters,
                      const dist::Group& world) {
  for (int i = 0; i < warmup; ++i)
    for (auto& v : variants) v.step();
  auto totals = [] {
    const auto stats = dist::comm_stats();
    const auto all = dist::total_of(stats);
    const auto cross = dist::cross_node_traffic_total();
    return std::make_tuple(all.seconds, dist::total_of(stats, dist::is_token_exchange).seconds,
                           static_cast<double>(all.bytes_sent), static_cast<double>(cross.bytes),
                           static_cast<double>(cross.messages));
  };
  for (int i = 0; i < iters; ++i)
    for (auto& v : variants) {
      dist::barrier(world);
      const auto before = totals();
      const auto t0 = std::chrono::steady_clock::now();
      v.step();
      const auto t1 = std::chrono::steady_clock::now();
      const auto after = totals();
      v.ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
      v.comm_ms.push_back(1e3 * (std::get<0>(after) - std::get<0>(before)));
      v.a2a_ms.push_back(1e3 * (std::get<1>(after) - std::get<1>(before)));
      v.bytes.push_back(std::get<2>(after) - std::get<2>(before));
      v.cross_bytes.push_back(std::get<3>(after) - std::get<3>(before));
      v.cross_messages.push_back(std::get<4>(after) - std::get<4>(before));
    }
}

// {step_ms (slowest rank's median), comm_ms and a2a_ms (mean over ranks of the medians)}.
nlohmann::json summarize(const Variant& v, const dist::Group& world) {
  return {{"step_ms", gather_value(median(v.ms), world).max().item<double>()},
          {"comm_blocked_ms", gather_value(median(v.comm_ms), world).mean().item<double>()},
          {"a2a_blocked_ms", gather_value(median(v.a2a_ms), world).mean().item<double>()}};
}

// One layer per option set, each loaded with its shard of `full`'s weights, in x's dtype.
std::vector<MoE> shard_layers(const std::vector<MoEOptions>& options, MoEImpl& full,
                              const std::shared_ptr<ParallelGroups>& groups,
                              const torch::Tensor& x) {
  std::vector<MoE> layers;
  for (const auto& o : options) {
    layers.emplace_back(o, groups);
    layers.back()->load_shard_from(full);
    layers.back()->to(x.scalar_type());
  }
  return layers;
}

// A forward + backward step of each layer on x (the layers must outlive the variants).
std::vector<Variant> fwd_bwd_variants(std::vector<MoE>& layers, const torch::Tensor& x) {
  std::vector<Variant> variants;
  for (auto& layer : layers)
    variants.push_back({[&layer, &x] {
      auto out = layer->forward(x);
      (out.output.sum() + out.aux_loss).backward();
    }});
  return variants;
}

// The overlap sweep: the layout with a2a_overlap_degree D for each D.
nlohmann::json overlap_sweep(const LayerBenchArgs& a, const MoEOptions& opts, MoEImpl& full,
                             const std::shared_ptr<ParallelGroups>& groups, const torch::Tensor& x,
                             const std::vector<int64_t>& degrees) {
  std::vector<MoEOptions> options;
  for (int64_t D : degrees) options.push_back(MoEOptions(opts).a2a_overlap_degree(D));
  auto layers = shard_layers(options, full, groups, x);
  auto variants = fwd_bwd_variants(layers, x);
  time_interleaved(variants, a.warmup, a.iters, groups->world);
  nlohmann::json rows = nlohmann::json::array();
  double a2a_base = -1.0;
  for (size_t i = 0; i < degrees.size(); ++i) {
    auto row = summarize(variants[i], groups->world);
    row["a2a_overlap_degree"] = degrees[i];
    if (degrees[i] == 1) a2a_base = row["a2a_blocked_ms"].get<double>();
    rows.push_back(row);
  }
  // Hidden: the share of the D = 1 all-to-all time that no longer blocks.
  for (auto& row : rows)
    if (a2a_base > 0)
      row["a2a_hidden_fraction"] = 1.0 - row["a2a_blocked_ms"].get<double>() / a2a_base;
  return rows;
}

// The all-to-all algorithm sweep: the layout with each MoEOptions::a2a_algorithm, timed
// interleaved, with the bytes and messages its token exchanges sent across nodes (summed over
// ranks; counted by the layer in the forward exchanges, which backward repeats in reverse: the
// same pairs, bytes and messages). Run where the ep group spans nodes with > 1 rank on each;
// elsewhere both algorithms are the same flat exchange (skipped, saying so). The hierarchical
// exchange sends point to point: its time is in comm_blocked_ms, not in a2a_blocked_ms (which
// counts all-to-alls).
nlohmann::json algorithm_sweep(const LayerBenchArgs& a, const MoEOptions& opts, MoEImpl& full,
                               const std::shared_ptr<ParallelGroups>& groups,
                               const torch::Tensor& x) {
  const auto& ep = groups->ep;
  bool two_levels = false;
  try {
    two_levels = exchange_algorithm(A2AAlgorithm::kHierarchical, ep.ranks, groups->ranks_per_node,
                                    ep.name) == A2AAlgorithm::kHierarchical;
  } catch (const c10::Error&) {
    two_levels = false;  // uneven nodes: the layer refuses kHierarchical; said below
  }
  // Every rank must take the same branch: the sweep is collective.
  if (gather_value(two_levels ? 1.0 : 0.0, groups->world).min().item<double>() < 1.0)
    return {{"skipped",
             "the ep group lies in one node, has one rank per node or fills its nodes "
             "unevenly: the hierarchical exchange does not apply"}};
  const std::vector<A2AAlgorithm> algorithms = {A2AAlgorithm::kFlat, A2AAlgorithm::kHierarchical};
  std::vector<MoEOptions> options;
  for (auto algorithm : algorithms) options.push_back(MoEOptions(opts).a2a_algorithm(algorithm));
  auto layers = shard_layers(options, full, groups, x);
  auto variants = fwd_bwd_variants(layers, x);
  time_interleaved(variants, a.warmup, a.iters, groups->world);
  nlohmann::json rows = nlohmann::json::array();
  for (size_t i = 0; i < algorithms.size(); ++i) {
    auto row = summarize(variants[i], groups->world);
    const auto sum = [&](const std::vector<double>& v) {
      return gather_value(median(v), groups->world).sum().item<double>();
    };
    row["a2a_algorithm"] = to_string(algorithms[i]);
    row["cross_node_bytes_forward"] = sum(variants[i].cross_bytes);
    row["cross_node_messages_forward"] = sum(variants[i].cross_messages);
    row["cross_node_bytes_per_step"] = 2.0 * sum(variants[i].cross_bytes);
    row["cross_node_messages_per_step"] = 2.0 * sum(variants[i].cross_messages);
    row["bytes_per_step"] = sum(variants[i].bytes);
    rows.push_back(row);
  }
  return {{"ranks_per_node", groups->ranks_per_node}, {"runs", rows}};
}

// The adaptive sweep: the expert layout over the stage (ep = etp = 1), every valid r.
nlohmann::json adaptive_sweep(const LayerBenchArgs& a, const MoEOptions& opts, MoEImpl& full,
                              const ParallelConfig& layout, dist::World& world,
                              const torch::Tensor& x) {
  const ExpertPlacement placement =
      expert_placement(ExpertLayout::kAdaptive, layout.stage_size(), opts.num_experts());
  if (!placement.fits() || !placement.check_hidden(opts.hidden()).empty() || layout.pp != 1)
    return {{"skipped",
             "experts and tp*dp do not divide one another (or S does not divide "
             "d_hidden, or pp > 1)"}};
  ParallelConfig c{layout.tp, layout.dp, 1, 1, 1};
  auto groups = std::make_shared<ParallelGroups>(ParallelGroups::build(c, world));
  MoE layer(MoEOptions(opts).expert_layout(ExpertLayout::kAdaptive), groups);
  layer->load_shard_from(full);
  layer->to(x.scalar_type());
  const auto degrees = layer->placement().valid_r;
  std::vector<Variant> variants;
  for (int64_t r : degrees)
    variants.push_back({[&layer, &x, r] {
      auto out = layer->forward_with(x, MoECallOptions().adaptive_r(r));
      (out.output.sum() + out.aux_loss).backward();
    }});
  time_interleaved(variants, a.warmup, a.iters, groups->world);
  nlohmann::json rows = nlohmann::json::array();
  for (size_t i = 0; i < degrees.size(); ++i) {
    auto row = summarize(variants[i], groups->world);
    row["adaptive_r"] = degrees[i];
    rows.push_back(row);
  }
  return {{"layout", {{"tp", c.tp}, {"dp", c.dp}, {"ep", 1}, {"etp", 1}}},
          {"shard_size", placement.shards},
          {"runs", rows}};
}

// Each rank's rows per expert ([E]) gathered over the group: [P][E].
std::vector<std::vector<int64_t>> counts_over(const torch::Tensor& per_expert,
                                              const dist::Group& group) {
  auto c = per_expert.to(torch::kInt64).cpu().contiguous();
  return dist::all_gather_counts(
      std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel()), group);
}

// What a routed step shows of the imbalance: max / mean rows per expert (all ranks' tokens) and
// per rank (the rows each rank's experts computed).
nlohmann::json imbalance(const MoEOutput& out, const dist::Group& group) {
  std::vector<double> per_expert(out.stats.tokens_per_expert.numel(), 0.0), per_rank;
  for (const auto& row : counts_over(out.stats.tokens_per_expert, group))
    for (size_t e = 0; e < row.size(); ++e) per_expert[e] += static_cast<double>(row[e]);
  for (auto n : dist::all_gather_counts(out.stats.expert_rows, group))
    per_rank.push_back(static_cast<double>(n));
  return {{"expert_max_over_mean", max_over_mean(per_expert)},
          {"rank_max_over_mean", max_over_mean(per_rank)},
          {"slowest_rank_expert_rows", *std::max_element(per_rank.begin(), per_rank.end())},
          {"rows_per_expert", per_expert}};
}

// The replication sweep: the layout with each replicate setting, timed interleaved.
nlohmann::json replicate_sweep(const LayerBenchArgs& a, const MoEOptions& opts, MoEImpl& full,
                               const std::shared_ptr<ParallelGroups>& groups,
                               const torch::Tensor& x, const DistLayerBenchOptions& sweeps) {
  std::vector<ReplicateOptions> settings;  // each setting with each placement ("off": once)
  for (const auto& setting : sweeps.replicate)
    for (auto p : sweeps.placements) {
      settings.push_back(parse_replicate(setting).figures(sweeps.figures).placement(p));
      if (settings.back().mode() == ReplicateMode::kOff) break;
    }
  std::vector<MoEOutput> last(settings.size());
  std::vector<MoEOptions> options;
  for (const auto& r : settings) options.push_back(MoEOptions(opts).replicate(r));
  auto layers = shard_layers(options, full, groups, x);
  std::vector<Variant> variants;
  for (size_t i = 0; i < layers.size(); ++i)
    variants.push_back({[&layers, &last, &x, i] {
      auto out = layers[i]->forward(x);
      (out.output.sum() + out.aux_loss).backward();
      last[i] = out;
    }});
  time_interleaved(variants, a.warmup, a.iters, groups->world);
  // The cost model on the counts of the last step (the same routing for every setting), each
  // ep rank's summed over its etp group.
  auto per_expert = last[0].stats.tokens_per_expert.to(torch::kInt64);
  if (groups->etp.size() > 1) {
    torch::NoGradGuard no_grad;
    per_expert = dist::all_reduce_sum(per_expert, groups->etp);
  }
  const auto counts = counts_over(per_expert, groups->ep);
  ReplicateShape shape;
  shape.d_model = opts.d_model();
  shape.hidden = opts.hidden() / groups->etp.size();
  shape.etp = groups->etp.size();
  shape.matmuls = opts.activation() == Activation::kSwiGLU ? 3 : 2;
  for (auto& kv : layers[0]->experts->named_parameters())
    shape.expert_params += kv.value().numel() / layers[0]->num_local_experts();
  shape.element_bytes = static_cast<int64_t>(x.element_size());
  // This host's figures as the layers used them (cores shared by the ranks included).
  const ReplicateFigures here = on_this_host(sweeps.figures, groups->ranks_per_node, x.is_cuda());
  nlohmann::json rows = nlohmann::json::array();
  for (size_t i = 0; i < variants.size(); ++i) {
    auto row = summarize(variants[i], groups->world);
    row["replicate"] = to_string(settings[i]);
    row["placement"] = to_string(settings[i].placement());
    row["bytes_per_step"] =
        gather_value(median(variants[i].bytes), groups->world).sum().item<double>();
    row["replicated"] = last[i].stats.replicated;
    row["imbalance"] = imbalance(last[i], groups->world);
    row["model_ms"] = 1e3 * replicate_cost(counts, last[i].stats.replicated, shape, here,
                                           settings[i].placement());
    rows.push_back(row);
  }
  nlohmann::json j = {{"figures",
                       {{"gemm_flops", here.gemm_flops()},
                        {"a2a_bytes_per_s", here.a2a_bytes_per_s()},
                        {"gather_bytes_per_s", here.gather_bytes_per_s()},
                        {"cores_per_rank", here.cores_per_rank()}}},
                      {"runs", rows}};
  // The cost model's view of the same counts on a cluster that is not at hand (an accelerator
  // per rank unless its figures say otherwise).
  if (sweeps.cluster) {
    const auto c = on_this_host(*sweeps.cluster, groups->ranks_per_node, /*on_device=*/true);
    const auto chosen =
        choose_replicated(counts, ReplicateOptions().mode(ReplicateMode::kAuto).figures(c), shape);
    j["cluster_prediction"] = {{"gemm_flops", c.gemm_flops()},
                               {"a2a_bytes_per_s", c.a2a_bytes_per_s()},
                               {"gather_bytes_per_s", c.gather_bytes_per_s()},
                               {"off_ms", 1e3 * replicate_cost(counts, {}, shape, c)},
                               {"auto_ms", 1e3 * replicate_cost(counts, chosen, shape, c)},
                               {"auto_replicated", chosen}};
  }
  return j;
}

}  // namespace

nlohmann::json run_layer_bench_distributed(const LayerBenchArgs& a, const ParallelConfig& layout,
                                           dist::World& world,
                                           const DistLayerBenchOptions& sweeps) {
  layout.validate(world.size());
  TORCH_CHECK(layout.world_size() == world.size(), "bench layer: layout ", layout.to_string(),
              " needs ", layout.world_size(), " ranks, launched ", world.size());
  TORCH_CHECK(a.tokens % layout.dp == 0, "bench layer: --tokens ", a.tokens,
              " must be divisible by dp=", layout.dp);
  at::set_num_threads(a.threads > 0 ? a.threads : 1);
  auto groups = std::make_shared<ParallelGroups>(ParallelGroups::build(layout, world));
  if (sweeps.ranks_per_node > 0) groups->ranks_per_node = sweeps.ranks_per_node;
  const auto dtype = a.dtype == "float64" ? torch::kFloat64 : torch::kFloat32;
  auto opts = with_skew(MoEOptions(a.d_model, a.experts)
                            .d_hidden(a.d_hidden)
                            .top_k(a.top_k)
                            .activation(parse_activation(a.activation))
                            .capacity_factor(a.capacity_factor)
                            .gate_type(a.gate),
                        a.skew);
  torch::manual_seed(a.seed);
  MoE full(opts);
  const int64_t local_tokens = a.tokens / layout.dp;
  auto x = torch::randn({local_tokens, a.d_model}, torch::dtype(dtype)).requires_grad_(true);
  set_zipf_bias(*full, a.skew, x.detach());
  MoE moe(opts, groups);
  moe->load_shard_from(*full);
  moe->to(dtype);
  MoEOutput last;
  auto step = [&] {
    auto out = moe->forward(x);
    (out.output.sum() + out.aux_loss).backward();
    last = out;
  };
  // 1. Distributed steps: time per step and the collectives inside it.
  for (int i = 0; i < a.warmup; ++i) step();
  dist::barrier(groups->world);
  dist::reset_comm_stats();
  const double step_ms = median_ms(0, a.iters, step);
  auto stats = dist::comm_stats();
  nlohmann::json comm = nlohmann::json::object();
  const dist::OpStats all_ops = dist::total_of(stats);
  const dist::OpStats a2a_ops = dist::total_of(stats, dist::is_token_exchange);
  const double comm_ms = 1e3 * all_ops.seconds / a.iters, a2a_ms = 1e3 * a2a_ops.seconds / a.iters;
  const double bytes = static_cast<double>(all_ops.bytes_sent) / a.iters;
  const double a2a_bytes = static_cast<double>(a2a_ops.bytes_sent) / a.iters;
  // 2. Across ranks: the slowest step, mean communication time, total bytes.
  auto steps = gather_value(step_ms, groups->world);
  auto a2a = gather_value(a2a_ms, groups->world);
  auto comms = gather_value(comm_ms, groups->world);
  auto a2a_b = gather_value(a2a_bytes, groups->world);
  auto all_b = gather_value(bytes, groups->world);
  for (const auto& [op, s] : stats)
    comm[op] = {{"calls_per_step", static_cast<double>(s.calls) / a.iters},
                {"ms_per_step", 1e3 * s.seconds / a.iters},
                {"bytes_per_step", static_cast<double>(s.bytes_sent) / a.iters}};
  // 3. The single-process time of the same global step, on rank 0 with the same threads.
  double single_ms = 0.0;
  if (world.rank() == 0 && !a.skip_naive) {
    full->to(dtype);
    auto xg = torch::randn({a.tokens, a.d_model}, torch::dtype(dtype)).requires_grad_(true);
    single_ms = median_ms(a.warmup, a.iters, [&] {
      auto out = full->forward(xg);
      (out.output.sum() + out.aux_loss).backward();
    });
  }
  dist::barrier(groups->world);
  nlohmann::json j = layer_args_json(a);
  j["bench"] = "layer_distributed";
  j["layout"] = {{"tp", layout.tp},
                 {"dp", layout.dp},
                 {"pp", layout.pp},
                 {"ep", layout.ep},
                 {"etp", layout.etp}};
  j["ranks"] = world.size();
  j["ranks_per_node"] = groups->ranks_per_node;
  j["nodes"] = node_crossing_text(layout, groups->ranks_per_node);
  j["threads_per_rank"] = at::get_num_threads();
  j["fwd_bwd_ms"] = steps.max().item<double>();
  j["a2a_ms"] = a2a.mean().item<double>();
  j["comm_ms"] = comms.mean().item<double>();
  j["comm_share"] = comms.mean().item<double>() / steps.max().item<double>();
  j["a2a_bytes_per_step"] = a2a_b.sum().item<double>();
  j["comm_bytes_per_step"] = all_b.sum().item<double>();
  j["rank0_collectives"] = comm;
  if (!a.skip_naive) j["single_process_fwd_bwd_ms"] = single_ms;
  // 4. The sweeps: overlap degree D, and the adaptive layout's r.
  if (!sweeps.overlap_degrees.empty()) {
    if (layout.ep > 1)
      j["overlap"] = overlap_sweep(a, opts, *full, groups, x, sweeps.overlap_degrees);
    else
      j["overlap"] = {{"skipped", "a2a_overlap_degree needs ep > 1"}};
  }
  if (sweeps.a2a_algorithms) {
    if (layout.ep > 1)
      j["a2a_algorithm"] = algorithm_sweep(a, opts, *full, groups, x);
    else
      j["a2a_algorithm"] = {{"skipped", "the token exchange needs ep > 1"}};
  }
  if (sweeps.adaptive) j["adaptive"] = adaptive_sweep(a, opts, *full, layout, world, x);
  j["imbalance"] = imbalance(last, groups->world);
  if (!sweeps.replicate.empty()) {
    if (layout.ep > 1)
      j["replicate"] = replicate_sweep(a, opts, *full, groups, x, sweeps);
    else
      j["replicate"] = {{"skipped", "replication needs ep > 1"}};
  }
  j["peak_rss_mb_rank0"] = peak_rss_mb();
  return j;
}

}  // namespace hybridmoe::bench
