// plan_command.cpp — `hmoe plan`: ranks every layout of a model on N ranks by the cost model of
// plan.h and prints the ranking (table or one JSON line). --probe measures the machine figures on
// N local ranks first; --measure K runs the top K layouts the trainer can run and prints predicted
// against measured step time and their rank correlation. Without a launcher's environment and
// with --probe or --measure on nproc > 1 it re-launches itself on nproc local ranks.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>

#include <nlohmann/json.hpp>

#include "hmoe/commands.h"
#include "hybridmoe/dist.h"
#include "hybridmoe/parallel.h"
#include "hybridmoe/plan.h"
#include "hybridmoe/train.h"

namespace hybridmoe::cli {

namespace {

// The model keys of `hmoe train` that the planner reads.
const std::vector<std::string> kModelKeys = {
    "d_model",     "n_layers",      "n_heads", "d_mlp",      "context", "moe_every",
    "num_experts", "expert_hidden", "top_k",   "batch_size", "seq_len"};

struct PlanArgs {
  std::string config_file;
  int64_t nproc = 0;  // 0: the configuration's nproc
  int64_t ranks_per_node = 0;
  double mem_mb = 0;
  bool json = false, probe = false, all = false, no_adaptive = false;
  int64_t top = 20;
  int64_t measure = 0, measure_steps = 8, measure_rounds = 2;
  bool spread = false, measure_config_layout = false;
  std::string zero = "0,1", overlap = "1,2,4", a2a_algorithms = "flat,hierarchical";
  int64_t max_micro_batches = 8;
  // Machine figures given as flags (< 0: not given).
  double flops = -1, gemm_latency_us = -1, op_latency_us = -1, overlap_efficiency = -1;
  double attention_flops = -1, stream_bw = -1;
  double intra_bw = -1, inter_bw = -1, intra_lat_us = -1, inter_lat_us = -1;
  int64_t cores = 0;                         // 0: not given
  std::map<std::string, std::string> model;  // key → flag text
};

std::vector<int64_t> int_list(const std::string& text, const std::string& flag) {
  std::vector<int64_t> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    try {
      out.push_back(std::stoll(item));
    } catch (const std::exception&) {
      TORCH_CHECK(false, flag, ": \"", text, "\" is not a comma-separated list of integers");
    }
  }
  TORCH_CHECK(!out.empty(), flag, ": empty list");
  return out;
}

std::vector<A2AAlgorithm> algorithm_list(const std::string& text) {
  std::vector<A2AAlgorithm> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(parse_a2a_algorithm(item));
  TORCH_CHECK(!out.empty(), "--a2a-algorithms: empty list; expected flat, hierarchical or both");
  return out;
}

TrainConfig model_config(const PlanArgs& a, CLI::App* cmd) {
  TrainConfig c;
  if (!a.config_file.empty()) apply_toml_file(c, a.config_file);
  for (const auto& k : kModelKeys)
    if (cmd->count(flag_name(k)) > 0) set_config_value(c, k, a.model.at(k));
  if (a.nproc > 0) c.nproc = a.nproc;
  return c;
}

// Flag figures over a starting machine (defaults or the probe's).
void apply_machine_flags(const PlanArgs& a, plan::MachineSpec& m) {
  bool given = false;
  auto mark = [&](double v) { return v >= 0 ? (given = true) : false; };
  if (mark(a.flops)) m.gemm_flops = a.flops;
  if (mark(a.gemm_latency_us)) m.gemm_latency_s = a.gemm_latency_us * 1e-6;
  if (mark(a.op_latency_us)) m.op_latency_s = a.op_latency_us * 1e-6;
  if (mark(a.overlap_efficiency)) m.overlap_efficiency = a.overlap_efficiency;
  if (mark(a.attention_flops)) m.attention_flops = a.attention_flops;
  if (mark(a.stream_bw)) m.stream_bytes_per_s = a.stream_bw * 1e9;
  if (mark(a.intra_bw)) m.set_bandwidth(false, a.intra_bw * 1e9);
  if (mark(a.inter_bw)) m.set_bandwidth(true, a.inter_bw * 1e9);
  if (mark(a.intra_lat_us)) m.set_latency(false, a.intra_lat_us * 1e-6);
  if (mark(a.inter_lat_us)) m.set_latency(true, a.inter_lat_us * 1e-6);
  if (a.cores > 0) {
    m.cores = a.cores;
    given = true;
  }
  if (given) m.source = m.source == "probe" ? "probe+flags" : "flags";
}

std::string machine_summary(const plan::MachineSpec& m) {
  std::ostringstream s;
  s.precision(3);
  s << "machine (" << m.source << "): GEMM " << m.gemm_flops / 1e9 << " GFLOP/s + "
    << m.gemm_latency_s * 1e6 << " us/call, attention " << m.attention_flops / 1e9
    << " GFLOP/s, streaming " << m.stream_bytes_per_s / 1e9 << " GB/s, op " << m.op_latency_s * 1e6
    << " us, overlap efficiency " << m.overlap_efficiency << ", " << m.cores << " cores per node";
  for (int c = 0; c < plan::kNumCollectives; ++c) {
    const auto& l = m.intra[c];
    s << "\n  " << plan::to_string(static_cast<plan::Collective>(c)) << ": intra "
      << l.latency_s * 1e6 << " us + bytes / " << l.bytes_per_s / 1e9 << " GB/s, inter "
      << m.inter[c].latency_s * 1e6 << " us + bytes / " << m.inter[c].bytes_per_s / 1e9 << " GB/s";
  }
  return s.str();
}

nlohmann::json layout_json(const plan::Layout& l) {
  return {{"tp", l.par.tp},
          {"dp", l.par.dp},
          {"pp", l.par.pp},
          {"ep", l.par.ep},
          {"etp", l.par.etp},
          {"zero", l.zero},
          {"adaptive_r", plan::json_adaptive_r(l)},
          {"overlap", l.overlap},
          {"micro_batches", l.micro_batches},
          {"a2a_algorithm", to_string(l.a2a_algorithm)}};
}

// The layout keys of `hmoe train` for the first layout of the ranking the trainer can run (over
// the model configuration `c`), as flags; "" when it can run none.
std::string first_runnable_as_flags(const std::vector<plan::Estimate>& ranking,
                                    const TrainConfig& c) {
  for (size_t i = 0; i < ranking.size(); ++i) {
    TrainConfig run = c;
    if (!plan::apply_layout(run, ranking[i].layout).empty()) continue;
    std::vector<std::string> keys = {
        "nproc", "tp", "dp", "pp", "ep", "etp", "micro_batches", "zero_stage", "expert_layout"};
    if (ranking[i].layout.is_adaptive()) keys.push_back("adaptive_r");
    keys.insert(keys.end(), {"a2a_overlap_degree", "a2a_algorithm"});
    std::ostringstream s;
    s << "hmoe train flags of rank " << i + 1 << " (the first the trainer can run):";
    for (const auto& k : keys) s << " " << flag_name(k) << " " << get_config_value(run, k);
    return s.str();
  }
  return "";
}

// Which groups of the table's layouts cross nodes (nothing on one node), one line per layout.
void print_node_crossings(const std::vector<plan::Estimate>& ranking, int64_t rows,
                          const plan::ClusterSpec& cluster) {
  if (cluster.ranks_per_node <= 0 || cluster.ranks_per_node >= cluster.world) return;
  std::printf("groups crossing nodes (%lld ranks per node):\n",
              static_cast<long long>(cluster.ranks_per_node));
  std::vector<ParallelConfig> seen;
  for (size_t i = 0; i < ranking.size() && (rows <= 0 || static_cast<int64_t>(i) < rows); ++i) {
    const ParallelConfig& par = ranking[i].layout.par;
    if (std::find(seen.begin(), seen.end(), par) != seen.end()) continue;
    seen.push_back(par);
    std::printf("  %-22s %s\n", par.to_string().c_str(),
                node_crossing_text(par, cluster.ranks_per_node).c_str());
  }
}

int run_plan(const PlanArgs& a, const TrainConfig& c, dist::World* world) {
  const bool lead = world == nullptr || world->rank() == 0;
  const plan::ModelSpec model = plan::ModelSpec::from_train_config(c);
  plan::ClusterSpec cluster;
  cluster.world = world ? world->size() : c.nproc;
  // --ranks-per-node, else the launcher's count of ranks on a node when several nodes take part.
  cluster.ranks_per_node = a.ranks_per_node;
  if (cluster.ranks_per_node == 0 && world && world->env().local_world_size < world->size())
    cluster.ranks_per_node = world->env().local_world_size;
  cluster.mem_per_rank_mb = a.mem_mb;
  plan::MachineSpec machine =
      (a.probe && world) ? plan::probe_machine(*world) : plan::MachineSpec();
  apply_machine_flags(a, machine);
  plan::PlanOptions o;
  o.zero_stages = int_list(a.zero, "--zero");
  o.overlap_degrees = int_list(a.overlap, "--overlap");
  o.max_micro_batches = a.max_micro_batches;
  o.adaptive = !a.no_adaptive;
  o.keep_unfit = a.all;
  o.a2a_algorithms = algorithm_list(a.a2a_algorithms);
  const auto ranking = plan::rank_layouts(model, cluster, machine, o);
  TORCH_CHECK(!ranking.empty(), "plan: no layout of this model fits ", cluster.world,
              " ranks with ", a.mem_mb, " MB per rank");
  if (a.measure <= 0) {
    if (!lead) return 0;
    if (a.json) {
      std::cout << plan::to_json(ranking) << std::endl;
    } else {
      std::cout << machine_summary(machine) << "\n"
                << ranking.size() << " layouts on " << cluster.world << " ranks (predicted):\n"
                << plan::to_table(ranking, a.top);
      print_node_crossings(ranking, a.top, cluster);
      const std::string flags = first_runnable_as_flags(ranking, c);
      if (!flags.empty()) std::cout << flags << std::endl;
    }
    return 0;
  }
  // --measure K: the top K runnable layouts, timed with the trainer.
  TORCH_CHECK(world != nullptr, "--measure needs the ranks (internal: no world)");
  std::vector<std::string> skipped;
  plan::MeasureOptions mo;
  mo.count = a.measure;
  mo.steps = a.measure_steps;
  mo.rounds = a.measure_rounds;
  mo.spread = a.spread;
  mo.include_base = a.measure_config_layout;
  const auto rows = plan::measure_layouts(c, ranking, mo, *world, &skipped);
  if (!lead) return 0;
  std::vector<double> pred, meas;
  for (const auto& r : rows) pred.push_back(r.predicted_ms), meas.push_back(r.measured_ms);
  const double rho = rows.size() >= 2 ? plan::spearman(pred, meas) : 0.0;
  double best = 0;
  for (const auto& r : rows) best = (best == 0 || r.measured_ms < best) ? r.measured_ms : best;
  const double gap = rows.empty() || best <= 0 ? 0.0 : rows.front().measured_ms / best - 1.0;
  if (a.json) {
    nlohmann::json j;
    j["measured"] = nlohmann::json::array();
    for (const auto& r : rows) {
      auto e = layout_json(r.layout);
      e["predicted_rank"] = r.predicted_rank;
      e["predicted_step_ms"] = r.predicted_ms;
      e["measured_step_ms"] = r.measured_ms;
      j["measured"].push_back(e);
    }
    j["spearman"] = rho;
    j["first_choice_vs_best_measured"] = gap;
    j["skipped"] = skipped;
    std::cout << j.dump() << std::endl;
    return 0;
  }
  std::cout << machine_summary(machine) << "\n";
  if (!skipped.empty()) {
    std::cout << skipped.size()
              << " higher-ranked layouts skipped (the trainer cannot run them):\n";
    for (size_t i = 0; i < skipped.size() && i < 12; ++i) std::cout << "  " << skipped[i] << "\n";
    if (skipped.size() > 12) std::cout << "  ... " << skipped.size() - 12 << " more\n";
  }
  std::printf("%4s  %-37s %12s %12s\n", "rank", "layout", "predicted_ms", "measured_ms");
  for (const auto& r : rows)
    std::printf("%4lld  %-37s %12.2f %12.2f\n", static_cast<long long>(r.predicted_rank + 1),
                r.layout.to_string().c_str(), r.predicted_ms, r.measured_ms);
  std::printf(
      "spearman rank correlation %.3f over %zu layouts; first choice %.1f %% %s the best "
      "measured\n",
      rho, rows.size(), gap * 100, gap <= 0 ? "(is)" : "slower than");
  std::fflush(stdout);
  return 0;
}

// A flag value that must be a number above `floor` (or at least `floor` when `inclusive`).
CLI::Validator number_above(double floor, bool inclusive) {
  std::ostringstream w;
  w << (inclusive ? ">= " : "> ") << floor;
  const std::string want = w.str();
  return CLI::Validator(
      [floor, inclusive, want](std::string& text) {
        try {
          const double v = std::stod(text);
          if (v > floor || (inclusive && v == floor)) return std::string();
        } catch (const std::exception&) {
        }
        return "expected a number " + want + ", got \"" + text + "\"";
      },
      want);
}

// A flag value that must be a whole number of at least `floor`.
CLI::Validator integer_at_least(int64_t floor) {
  const std::string want = "an integer >= " + std::to_string(floor);
  return CLI::Validator(
      [floor, want](std::string& text) {
        try {
          size_t used = 0;
          const long long v = std::stoll(text, &used);
          if (used == text.size() && v >= floor) return std::string();
        } catch (const std::exception&) {
        }
        return "expected " + want + ", got \"" + text + "\"";
      },
      want);
}

}  // namespace

void add_plan_command(CLI::App& app) {
  auto a = std::make_shared<PlanArgs>();
  auto* cmd = app.add_subcommand("plan",
                                 "Rank every parallel layout of the model by a cost model "
                                 "(--probe: measured machine; --measure K: time the top K)");
  cmd->add_option("--config", a->config_file, "TOML file of `hmoe train` keys (model, nproc)");
  cmd->add_option("--nproc", a->nproc, "Ranks to plan for (default: the configuration's nproc)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--ranks-per-node", a->ranks_per_node, "Ranks per node (0: one node)")
      ->capture_default_str();
  cmd->add_option("--mem-mb", a->mem_mb, "Memory per rank in MiB (0: unlimited)")
      ->capture_default_str();
  cmd->add_flag("--json", a->json, "Print one JSON line");
  cmd->add_flag("--probe", a->probe, "Measure the machine figures on nproc local ranks");
  cmd->add_flag("--all", a->all, "Keep layouts that do not fit memory (ranked last)");
  cmd->add_flag("--no-adaptive", a->no_adaptive, "Leave out adaptive-r layouts");
  cmd->add_option("--top", a->top, "Rows of the table (0: all)")->capture_default_str();
  cmd->add_option("--measure", a->measure, "Run the top K runnable layouts and compare")
      ->capture_default_str();
  cmd->add_option("--measure-steps", a->measure_steps, "Steps per measured layout")
      ->capture_default_str();
  cmd->add_option("--measure-rounds", a->measure_rounds,
                  "Rounds over the measured layouts (fastest round counts)")
      ->capture_default_str();
  cmd->add_flag("--spread", a->spread,
                "--measure: K runnable layouts spread over the ranking instead of the top K");
  cmd->add_flag("--measure-config-layout", a->measure_config_layout,
                "--measure: also run the configuration's own layout (hmoe train's default layout "
                "unless --config sets one)");
  cmd->add_option("--zero", a->zero, "ZeRO stages to consider")->capture_default_str();
  cmd->add_option("--overlap", a->overlap, "a2a overlap degrees to consider")
      ->capture_default_str();
  cmd->add_option("--a2a-algorithms", a->a2a_algorithms,
                  "Token all-to-all algorithms to weigh (flat, hierarchical): each layout gets "
                  "the fastest the layer can run there (hierarchical: the exchange group spans "
                  "nodes evenly with > 1 rank on each, overlap degree 1), else flat")
      ->capture_default_str();
  cmd->add_option("--max-micro-batches", a->max_micro_batches, "Largest micro-batch count")
      ->capture_default_str();
  const CLI::Validator positive = number_above(0, false), non_negative = number_above(0, true);
  cmd->add_option("--flops", a->flops, "GEMM FLOP/s per rank")->check(positive);
  cmd->add_option("--gemm-latency-us", a->gemm_latency_us, "Fixed cost of a GEMM call (us)")
      ->check(non_negative);
  cmd->add_option("--op-latency-us", a->op_latency_us, "Fixed cost of another operator (us)")
      ->check(non_negative);
  cmd->add_option("--attention-flops", a->attention_flops,
                  "FLOP/s of attention's batched small GEMMs per rank")
      ->check(positive);
  cmd->add_option("--stream-bw", a->stream_bw,
                  "Bytes elementwise operators read plus write per rank (GB/s)")
      ->check(positive);
  cmd->add_option("--overlap-efficiency", a->overlap_efficiency,
                  "Share of an all-to-all hidden behind compute issued with it (0..1)")
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--cores", a->cores,
                  "Cores per node, shared by its ranks (default: 2, or the probe's count)")
      ->check(integer_at_least(1));
  cmd->add_option("--intra-bw", a->intra_bw, "Intra-node bandwidth of every collective (GB/s)")
      ->check(positive);
  cmd->add_option("--inter-bw", a->inter_bw, "Inter-node bandwidth of every collective (GB/s)")
      ->check(positive);
  cmd->add_option("--intra-lat-us", a->intra_lat_us, "Intra-node latency per ring step (us)")
      ->check(non_negative);
  cmd->add_option("--inter-lat-us", a->inter_lat_us, "Inter-node latency per ring step (us)")
      ->check(non_negative);
  const TrainConfig defaults;
  for (const auto& k : kModelKeys) {
    a->model[k] = "";
    cmd->add_option(flag_name(k), a->model[k],
                    "model key (default " + get_config_value(defaults, k) + ")");
  }
  add_node_flags(cmd);
  cmd->callback([a, cmd] {
    TrainConfig c = model_config(*a, cmd);
    const bool needs_ranks = a->probe || a->measure > 0;
    int code = 0;
    if (!needs_ranks) {
      code = run_plan(*a, c, nullptr);
    } else {
      code = run_here_or_on_local_ranks(c.nproc, [&] {
        auto world = dist::init();
        at::set_num_threads(1);
        const int rc = run_plan(*a, c, world.get());
        world->finalize();
        return rc;
      });
    }
    if (code != 0) throw CLI::RuntimeError(code);
  });
}

}  // namespace hybridmoe::cli
