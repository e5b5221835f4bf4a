// verify_command.cpp — `hmoe verify`: proves each parallel layout equals one process. Without a
// launcher's environment and with --nproc > 1 it re-launches itself on N local ranks.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>

#include <nlohmann/json.hpp>

#include "hmoe/commands.h"
#include "hybridmoe/collectives.h"
#include "hybridmoe/dist.h"
#include "hybridmoe/parallel.h"
#include "hybridmoe/train.h"
#include "hybridmoe/verify.h"

namespace hybridmoe::cli {

namespace {

std::vector<std::string> g_self;

// The node flags of the running subcommand (add_node_flags).
struct NodeFlags {
  int64_t nnodes = 1;
  int64_t node_rank = 0;
  std::string master_addr = "127.0.0.1";
  int64_t master_port = 0;
};
NodeFlags g_nodes;

struct VerifyArgs {
  int64_t nproc = 1;
  std::string layouts = "all";
  std::string gates = "topk,topk@1.0";
  std::string dtype = "float64";
  std::string schedules = "1f1b";
  std::string adaptive_r;  ///< "": fixed experts; "all", "every-step" or an r
  std::string model;       ///< "": the MoE layer (GPT for pp > 1); else a model family
  std::string recompute = "none";
  std::string replicate = "off";  ///< hot-expert replication of the layout's MoE: off, auto or N
  std::string replicate_placement = "source";  ///< where replicated experts' rows run
  std::string a2a_algorithm = "flat";  ///< the layout's token exchange: flat or hierarchical
  bool json = false;
  VerifyOptions options;
};

std::vector<std::string> split_list(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, sep))
    if (!item.empty()) out.push_back(item);
  return out;
}

// "all", or a ';'-separated list of "tp,dp,ep,etp" or "tp,dp,pp,ep,etp" layouts. "all" for a
// family's model keeps the layouts whose tp divides its heads.
std::vector<ParallelConfig> parse_layouts(const std::string& text, int64_t nproc, int64_t experts,
                                          int64_t d_hidden, bool family) {
  std::vector<ParallelConfig> out;
  if (text == "all") {
    for (int64_t w = 1; w <= nproc; ++w)
      for (const auto& c : verifiable_layouts(w, experts, d_hidden))
        if (!family || kVerifyFamilyHeads % c.tp == 0) out.push_back(c);
    return out;
  }
  for (const auto& item : split_list(text, ';')) {
    std::vector<int64_t> v;
    for (const auto& n : split_list(item, ',')) {
      try {
        v.push_back(std::stoll(n));
      } catch (const std::exception&) {
        TORCH_CHECK(false, "--layouts: \"", item, "\" is not a list of integers");
      }
    }
    TORCH_CHECK(v.size() == 4 || v.size() == 5,
                "--layouts: expected tp,dp,ep,etp or "
                "tp,dp,pp,ep,etp, got \"",
                item, "\"");
    ParallelConfig c;
    c.tp = v[0];
    c.dp = v[1];
    c.pp = v.size() == 5 ? v[2] : 1;
    c.ep = v[v.size() - 2];
    c.etp = v.back();
    c.validate(c.world_size());
    TORCH_CHECK(c.world_size() <= nproc, "--layouts: ", c.to_string(), " needs ", c.world_size(),
                " ranks but --nproc is ", nproc);
    out.push_back(c);
  }
  return out;
}

int run_worker(const VerifyArgs& a) {
  auto world = dist::init();
  TORCH_CHECK(world->size() >= a.nproc || a.nproc == 1, "verify: --nproc ", a.nproc,
              " but the world has ", world->size(), " ranks");
  at::set_num_threads(1);
  VerifyOptions o = a.options;
  try {
    o.dtype = scalar_type(parse_dtype(a.dtype));
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "--dtype: ", e.what_without_backtrace());
  }
  if (!a.model.empty()) {
    try {
      o.model = parse_model_family(a.model);
    } catch (const c10::Error& e) {
      TORCH_CHECK(false, "--model: ", e.what_without_backtrace());
    }
  }
  try {
    o.recompute = parse_recompute(a.recompute);
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "--recompute: ", e.what_without_backtrace());
  }
  try {
    o.replicate = parse_replicate(a.replicate);
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "--replicate: ", e.what_without_backtrace());
  }
  try {
    o.replicate.placement(parse_replicate_placement(a.replicate_placement));
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "--replicate-placement: ", e.what_without_backtrace());
  }
  try {
    o.a2a_algorithm = parse_a2a_algorithm(a.a2a_algorithm);
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "--a2a-algorithm: ", e.what_without_backtrace());
  }
  const int64_t per_node =  // nodes hold consecutive ranks
      o.ranks_per_node > 0 ? o.ranks_per_node : world->env().local_world_size;
  auto layouts =
      parse_layouts(a.layouts, world->size(), o.experts, o.d_hidden, o.model.has_value());
  // The hierarchical exchange needs its group to fill its nodes evenly: "all" keeps those
  // layouts (a listed layout that does not is refused by the layer, naming the group).
  if (o.a2a_algorithm == A2AAlgorithm::kHierarchical && a.layouts == "all")
    layouts.erase(std::remove_if(
                      layouts.begin(), layouts.end(),
                      [&](const ParallelConfig& c) {
                        const auto kind = a.adaptive_r.empty() ? GroupKind::kEp : GroupKind::kStage;
                        try {
                          for (const auto& g : all_group_ranks(c, kind))
                            exchange_algorithm(o.a2a_algorithm, g, per_node, to_string(kind));
                        } catch (const c10::Error&) {
                          return true;
                        }
                        return false;
                      }),
                  layouts.end());
  // Replication runs on layouts with ep > 1 (any etp): "all" keeps those.
  if (o.replicate.mode() != ReplicateMode::kOff && a.layouts == "all")
    layouts.erase(std::remove_if(layouts.begin(), layouts.end(),
                                 [](const ParallelConfig& c) { return c.ep == 1; }),
                  layouts.end());
  std::vector<GateSpec> gates;
  for (const auto& g : split_list(a.gates, ',')) gates.push_back(GateSpec::parse(g));
  const bool lead = world->rank() == 0;
  nlohmann::json rows = nlohmann::json::array();
  bool all_pass = true;
  int64_t run_id = 0;
  if (lead && !a.json)
    std::printf("%-22s %-16s %12s %12s  %s\n", "layout", "gate", "loss_rel_err", "param_rel_err",
                "result");
  std::vector<PipelineSchedule> schedules;
  for (const auto& s : split_list(a.schedules, ','))
    schedules.push_back(parse_pipeline_schedule(s));
  TORCH_CHECK(!schedules.empty(), "--schedules: expected 1f1b, gpipe or both, got \"", a.schedules,
              "\"");
  // --adaptive-r: the expert layouts of each layout (the fixed experts without the flag).
  struct ExpertRun {
    ExpertLayout layout = ExpertLayout::kFixed;
    AdaptiveR r;
  };
  auto expert_runs = [&](const ParallelConfig& layout) -> std::vector<ExpertRun> {
    if (a.adaptive_r.empty()) return {ExpertRun{}};
    const auto valid = adaptive_r_values(layout, o.experts, o.d_hidden);
    if (valid.empty()) {
      TORCH_CHECK(a.layouts == "all", "--adaptive-r: layout ", layout.to_string(), " with ",
                  o.experts,
                  " experts has no adaptive expert layout (needs pp=ep=etp=1, E and "
                  "tp*dp dividing one another, S dividing d_hidden)");
      return {};
    }
    std::vector<ExpertRun> out;
    if (a.adaptive_r == "all") {
      for (int64_t r : valid) out.push_back({ExpertLayout::kAdaptive, AdaptiveR::value(r)});
      out.push_back({ExpertLayout::kAdaptive, AdaptiveR::every_step()});
      return out;
    }
    std::optional<AdaptiveR> r;  // one r or every-step; auto is the trainer's, not verify's
    try {
      r = AdaptiveR::parse(a.adaptive_r);
    } catch (const c10::Error&) {
    }
    TORCH_CHECK(r && r->kind() != AdaptiveR::Kind::kAuto,
                "--adaptive-r: expected all, every-step or an integer, got \"", a.adaptive_r, "\"");
    return {{ExpertLayout::kAdaptive, *r}};
  };
  // The run's expert layout in the JSON ("fixed", "every_step" or r) and in the table.
  auto r_json = [](const ExpertRun& run) -> nlohmann::json {
    if (run.layout == ExpertLayout::kFixed) return "fixed";
    if (!run.r.is_value()) return "every_step";
    return run.r.value();
  };
  auto r_text = [](const ExpertRun& run) -> std::string {
    if (run.layout == ExpertLayout::kFixed) return "";
    if (!run.r.is_value()) return " r=every_step";
    return " r=" + std::to_string(run.r.value());
  };
  for (const auto& layout : layouts)
    for (const auto& gate : gates)
      for (const ExpertRun& run : expert_runs(layout))
        for (size_t si = 0; si < (layout.pp > 1 ? schedules.size() : 1); ++si) {
          o.schedule = schedules[si];
          o.expert_layout = run.layout;
          o.adaptive_r = run.r;
          VerifyRow row = verify_layout(*world, layout, gate, o, run_id++);
          // Every rank waits here for the run's members: a rank outside many small layouts
          // never waits longer than one run (not for all of them, in a store rendezvous).
          if (world->size() > 1) dist::barrier(world->group());
          if (!lead) continue;
          all_pass = all_pass && row.pass;
          rows.push_back({{"tp", layout.tp},
                          {"dp", layout.dp},
                          {"pp", layout.pp},
                          {"ep", layout.ep},
                          {"etp", layout.etp},
                          {"gate", row.gate},
                          {"model", row.model},
                          {"schedule", row.schedule},
                          {"micro_batches", row.micro_batches},
                          {"adaptive_r", r_json({row.expert_layout, row.adaptive_r})},
                          {"zero", row.zero_stage},
                          {"replicate", row.replicate},
                          {"replicate_placement", row.replicate_placement},
                          {"a2a_algorithm", row.a2a_algorithm},
                          {"loss_rel_err", row.loss_rel_err},
                          {"param_rel_err", row.param_rel_err},
                          {"pass", row.pass},
                          {"nodes", node_crossing_text(layout, per_node)}});
          // Across nodes, each row says which of the layout's groups cross them.
          // With --a2a-algorithm hierarchical, the exchange each layout ran.
          const bool asked = o.a2a_algorithm == A2AAlgorithm::kHierarchical;
          const std::string nodes =
              (layout.world_size() > per_node ? "  (" + node_crossing_text(layout, per_node) + ")"
                                              : "") +
              (asked ? " a2a=" + row.a2a_algorithm : "");
          if (!a.json)
            std::printf("%-22s %-16s %12.3e %12.3e  %s%s\n",
                        (layout.to_string() + (row.schedule.empty() ? "" : " " + row.schedule) +
                         r_text(run))
                            .c_str(),
                        row.gate.c_str(), row.loss_rel_err, row.param_rel_err,
                        row.pass ? "pass" : "FAIL", nodes.c_str());
          std::fflush(stdout);
        }
  if (lead && a.json) std::cout << nlohmann::json{{"layouts", rows}}.dump() << std::endl;
  if (lead && !a.json)
    std::printf("%zu runs, %s\n", rows.size(), all_pass ? "all pass" : "FAILURES");
  world->finalize();
  return all_pass ? 0 : 1;
}

}  // namespace

std::vector<std::string> self_command() {
  return g_self;
}

void set_self_command(int argc, char** argv) {
  g_self.assign(argv, argv + argc);
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n > 0) g_self[0] = std::string(buf, n);
}

void add_node_flags(CLI::App* cmd) {
  NodeFlags& n = g_nodes;
  cmd->add_option("--nnodes", n.nnodes, "Nodes that the --nproc ranks lie on")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--node-rank", n.node_rank, "This node's index in [0, nnodes)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--master-addr", n.master_addr, "Address of node 0 (rendezvous)")
      ->capture_default_str();
  cmd->add_option("--master-port", n.master_port,
                  "Rendezvous port; 0: a free one on one node, 29500 across nodes")
      ->capture_default_str();
}

int run_here_or_on_local_ranks(int64_t nproc, const std::function<int()>& worker) {
  const bool in_launcher =
      std::getenv("RANK") || std::getenv("OMPI_COMM_WORLD_RANK") || std::getenv("SLURM_PROCID");
  const NodeFlags& n = g_nodes;
  if (in_launcher || (nproc <= 1 && n.nnodes == 1)) return worker();
  TORCH_CHECK(nproc % n.nnodes == 0, "--nproc ", nproc, " should be a multiple of --nnodes ",
              n.nnodes, " (every node runs the same number of ranks)");
  TORCH_CHECK(n.node_rank < n.nnodes, "--node-rank should be in [0, ", n.nnodes, "), got ",
              n.node_rank);
  dist::LaunchOptions lo;
  lo.nproc = nproc / n.nnodes;
  lo.nnodes = n.nnodes;
  lo.node_rank = n.node_rank;
  lo.master_addr = n.master_addr;
  lo.master_port = n.master_port;
  lo.command = self_command();
  lo.plain_lead_stdout = true;
  return dist::launch_local(lo).exit_code;
}

void add_verify_command(CLI::App& app) {
  auto a = std::make_shared<VerifyArgs>();
  auto* cmd = app.add_subcommand("verify", "Prove that parallel layouts equal one process");
  cmd->add_option("--nproc", a->nproc, "Local ranks to launch (max world size)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--layouts", a->layouts, "all, or tp,dp,ep,etp;tp,dp,pp,ep,etp;...")
      ->capture_default_str();
  cmd->add_option(
         "--gates", a->gates,
         "Comma-separated gate specs: name[:k][@capacity_factor]; name: a gate, gate+convention "
         "(e.g. topk+gshard, cosine+tutel), or deepspeed, tutel, megatron (the topk "
         "gate with that peer's rules)")
      ->capture_default_str();
  cmd->add_option("--steps", a->options.steps, "Optimizer steps")->capture_default_str();
  cmd->add_option("--schedules", a->schedules,
                  "Pipeline schedules of pp > 1 layouts: 1f1b, gpipe or 1f1b,gpipe")
      ->capture_default_str();
  cmd->add_option("--micro-batches", a->options.micro_batches,
                  "Micro-batches of pp > 1 layouts (0: pp + 1)")
      ->capture_default_str();
  cmd->add_option("--dtype", a->dtype, "float64 | float32")->capture_default_str();
  cmd->add_option("--tokens-per-rank", a->options.tokens_per_rank, "Tokens per data-parallel rank")
      ->capture_default_str();
  cmd->add_option("--experts", a->options.experts, "Experts")->capture_default_str();
  cmd->add_option("--top-k", a->options.top_k, "Experts per token")->capture_default_str();
  cmd->add_option("--d-hidden", a->options.d_hidden, "Expert hidden width")->capture_default_str();
  cmd->add_option("--tolerance", a->options.tolerance, "Relative tolerance (0: by dtype)");
  cmd->add_option("--zero", a->options.zero_stage,
                  "ZeRO stage of the layout's optimizer: 0 (replicated Adam) or 1 (sharded)")
      ->check(CLI::Range(0, 1))
      ->capture_default_str();
  cmd->add_option("--adaptive-r", a->adaptive_r,
                  "Adaptive expert layout (layouts with ep=etp=1): all (every valid r, plus r "
                  "changing every step), every-step, or one r");
  cmd->add_option("--model", a->model,
                  "Prove every layout on this family's model at verify size (mixtral, qwen2_moe, "
                  "qwen3_moe, olmoe, deepseek_v3, gpt) instead of the MoE layer");
  cmd->add_option("--recompute", a->recompute,
                  "The layout's model recomputes activations in backward: none, block or moe "
                  "(runs the GPT, or the --model family, on every layout)")
      ->capture_default_str();
  cmd->add_option("--replicate", a->replicate,
                  "Hot-expert replication of the layout's MoE layer: off, auto or N (the N "
                  "hottest); with \"all\" layouts, those with ep > 1")
      ->capture_default_str();
  cmd->add_option("--replicate-placement", a->replicate_placement,
                  "Where replicated experts' rows are computed: source (the rank that routed "
                  "them, FasterMoE) or spread (evenly over the ep ranks)")
      ->capture_default_str();
  cmd->add_option("--a2a-algorithm", a->a2a_algorithm,
                  "Token exchange of the layout's MoE: flat or hierarchical (Tutel's 2DH, where "
                  "the exchange group spans nodes; with \"all\" layouts, those whose group fills "
                  "its nodes evenly)")
      ->capture_default_str();
  cmd->add_option("--ranks-per-node", a->options.ranks_per_node,
                  "Ranks per node of the layouts' groups (0: the launcher's LOCAL_WORLD_SIZE); one "
                  "host can play several nodes")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_flag("--json", a->json, "Print one JSON line");
  add_node_flags(cmd);
  cmd->callback([a] {
    const int code = run_here_or_on_local_ranks(a->nproc, [&] { return run_worker(*a); });
    if (code != 0) throw CLI::RuntimeError(code);
  });
}

}  // namespace hybridmoe::cli
