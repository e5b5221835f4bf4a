// verify_command.cpp — `hmoe verify`: proves each parallel layout equals one process. Without a
// launcher's environment and with --nproc > 1 it re-launches itself on N local ranks.
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <memory>
#include <sstream>

#include <nlohmann/json.hpp>

#include "hmoe/commands.h"
#include "hybridmoe/dist.h"
#include "hybridmoe/verify.h"

namespace hybridmoe::cli {

namespace {

std::vector<std::string> g_self;

struct VerifyArgs {
  int64_t nproc = 1;
  std::string layouts = "all";
  std::string gates = "topk,topk@1.0";
  std::string dtype = "float64";
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

// "all", or a ';'-separated list of "tp,dp,ep,etp" or "tp,dp,pp,ep,etp" layouts.
std::vector<ParallelConfig> parse_layouts(const std::string& text, int64_t nproc, int64_t experts,
                                          int64_t d_hidden) {
  std::vector<ParallelConfig> out;
  if (text == "all") {
    for (int64_t w = 1; w <= nproc; ++w)
      for (const auto& c : verifiable_layouts(w, experts, d_hidden)) out.push_back(c);
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
    TORCH_CHECK(c.pp == 1, "--layouts: pipeline layouts are not supported yet, got ",
                c.to_string());
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
  TORCH_CHECK(a.dtype == "float64" || a.dtype == "float32",
              "--dtype: expected float64 or "
              "float32, got \"",
              a.dtype, "\"");
  o.dtype = a.dtype == "float64" ? torch::kFloat64 : torch::kFloat32;
  auto layouts = parse_layouts(a.layouts, world->size(), o.experts, o.d_hidden);
  std::vector<GateSpec> gates;
  for (const auto& g : split_list(a.gates, ',')) gates.push_back(GateSpec::parse(g));
  const bool lead = world->rank() == 0;
  nlohmann::json rows = nlohmann::json::array();
  bool all_pass = true;
  int64_t run_id = 0;
  if (lead && !a.json)
    std::printf("%-22s %-16s %12s %12s  %s\n", "layout", "gate", "loss_rel_err", "param_rel_err",
                "result");
  for (const auto& layout : layouts)
    for (const auto& gate : gates) {
      VerifyRow row = verify_layout(*world, layout, gate, o, run_id++);
      if (!lead) continue;
      all_pass = all_pass && row.pass;
      rows.push_back({{"tp", layout.tp},
                      {"dp", layout.dp},
                      {"pp", layout.pp},
                      {"ep", layout.ep},
                      {"etp", layout.etp},
                      {"gate", row.gate},
                      {"loss_rel_err", row.loss_rel_err},
                      {"param_rel_err", row.param_rel_err},
                      {"pass", row.pass}});
      if (!a.json)
        std::printf("%-22s %-16s %12.3e %12.3e  %s\n", layout.to_string().c_str(), row.gate.c_str(),
                    row.loss_rel_err, row.param_rel_err, row.pass ? "pass" : "FAIL");
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

void add_verify_command(CLI::App& app) {
  auto a = std::make_shared<VerifyArgs>();
  auto* cmd = app.add_subcommand("verify", "Prove that parallel layouts equal one process");
  cmd->add_option("--nproc", a->nproc, "Local ranks to launch (max world size)")
      ->capture_default_str();
  cmd->add_option("--layouts", a->layouts, "all, or tp,dp,ep,etp;tp,dp,ep,etp;...")
      ->capture_default_str();
  cmd->add_option("--gates", a->gates, "Comma-separated gate specs: name or name@capacity_factor")
      ->capture_default_str();
  cmd->add_option("--steps", a->options.steps, "Optimizer steps")->capture_default_str();
  cmd->add_option("--dtype", a->dtype, "float64 | float32")->capture_default_str();
  cmd->add_option("--tokens-per-rank", a->options.tokens_per_rank, "Tokens per data-parallel rank")
      ->capture_default_str();
  cmd->add_option("--experts", a->options.experts, "Experts")->capture_default_str();
  cmd->add_option("--top-k", a->options.top_k, "Experts per token")->capture_default_str();
  cmd->add_option("--d-hidden", a->options.d_hidden, "Expert hidden width")->capture_default_str();
  cmd->add_option("--tolerance", a->options.tolerance, "Relative tolerance (0: by dtype)");
  cmd->add_flag("--json", a->json, "Print one JSON line");
  cmd->callback([a] {
    const bool in_launcher =
        std::getenv("RANK") || std::getenv("OMPI_COMM_WORLD_RANK") || std::getenv("SLURM_PROCID");
    int code = 0;
    if (!in_launcher && a->nproc > 1) {
      dist::LaunchOptions lo;
      lo.nproc = a->nproc;
      lo.command = self_command();
      lo.prefix_output = false;
      code = dist::launch_local(lo).exit_code;
    } else {
      code = run_worker(*a);
    }
    if (code != 0) throw CLI::RuntimeError(code);
  });
}

}  // namespace hybridmoe::cli
