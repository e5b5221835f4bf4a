// train_command.cpp — `hmoe train`: trains the MoE GPT (train.h). The configuration comes from
// the defaults, then --config FILE (TOML), then flags (one per key: --d-model, --steps, --tp, ...),
// with `--model FAMILY` (or `model` in the file) setting its family's preset under all of them,
// and is checked before any rank starts. Without a launcher's environment and with nproc > 1 it
// re-launches itself on nproc local ranks.
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>

#include "hmoe/commands.h"
#include "hybridmoe/cpu_runtime.h"
#include "hybridmoe/detail/fingerprint.h"
#include "hybridmoe/dist.h"
#include "hybridmoe/plan.h"
#include "hybridmoe/train.h"

namespace hybridmoe::cli {

std::string flag_name(const std::string& key) {
  std::string f = key;
  for (auto& ch : f)
    if (ch == '_') ch = '-';
  return "--" + f;
}

namespace {

struct TrainArgs {
  std::string config_file;
  bool print_config = false;
  std::map<std::string, std::string> values;  // key → flag text
  std::map<std::string, bool> flags;          // bool keys
};

// The keys given: the TOML file's, then the flags given on the command line (a flag wins over
// the file), applied over `c` by apply_config_values: a `model` among them sets its family's
// preset first, under every key given explicitly.
void apply_given(TrainConfig& c, const TrainArgs& a, CLI::App* cmd) {
  ConfigValues given;
  if (!a.config_file.empty()) given = read_toml_file(a.config_file);
  for (const auto& k : train_config_keys()) {
    const std::string f = flag_name(k.name);
    if (k.kind == ConfigKind::kBool) {
      if (cmd->count(f) + cmd->count("--no-" + f.substr(2)) > 0)
        given.emplace_back(k.name, a.flags.at(k.name) ? "true" : "false");
    } else if (cmd->count(f) > 0) {
      given.emplace_back(k.name, a.values.at(k.name));
    }
  }
  apply_config_values(c, given);
}

// Keys that describe this invocation rather than the run: never taken from a checkpoint.
bool per_invocation(const std::string& key) {
  return key == "out" || key == "resume" || key == "overwrite" || key == "stop_after" ||
         key == "progress";
}

// Defaults, then the TOML file, then the flags. With resume: the configuration stored in the
// checkpoint, with what the file and the flags give now as overrides (printed once).
TrainConfig effective_config(const TrainArgs& a, CLI::App* cmd) {
  TrainConfig c;
  apply_given(c, a, cmd);
  if (!c.resume) return c;
  const std::string dir = resume_config_checkpoint(c.out);
  TORCH_CHECK(!dir.empty(), "--resume: no checkpoint under ", c.out,
              "/checkpoints (none has a readable checkpoint.meta)");
  const TrainConfig stored = read_checkpoint_config(dir);
  TrainConfig r = stored;
  for (const auto& k : train_config_keys())
    if (per_invocation(k.name)) set_config_value(r, k.name, get_config_value(c, k.name));
  apply_given(r, a, cmd);
  if (std::getenv("RANK") == nullptr && !a.print_config) {
    std::ostringstream overrides;
    for (const auto& k : train_config_keys()) {
      if (per_invocation(k.name)) continue;
      const std::string now = get_config_value(r, k.name), then = get_config_value(stored, k.name);
      if (now != then)
        overrides << "\n  " << k.name << " = " << now << " (checkpoint: " << then << ")";
    }
    std::printf("resume: the configuration of %s%s%s\n", dir.c_str(),
                overrides.tellp() > 0 ? ", with overrides:" : " (no overrides)",
                overrides.str().c_str());
    std::fflush(stdout);
  }
  return r;
}

// The line `layout = "auto"` prints about its choice.
void announce_auto_layout(const plan::AutoLayout& a, const std::string& source) {
  std::printf(
      "layout auto: %s (planner's choice %zu of %zu on %s machine figures, predicted "
      "%.2f ms/step)\n",
      a.estimate.layout.to_string().c_str(), a.position + 1, a.ranked, source.c_str(),
      a.estimate.step_s * 1e3);
  std::fflush(stdout);
}

// One rank of the run.
int run_rank(const TrainConfig& c) {
  auto world = dist::init();
  // One thread pool per rank over this machine's cores (cpu_runtime.h).
  const CpuThreads threads = configure_cpu_threads(
      default_intra_op_threads(dist::parse_env(dist::process_env()).local_world_size));
  if (world->rank() == 0) std::printf("cpu: %s\n", describe(threads).c_str());
  TrainConfig config = c;
  if (config.layout_mode == LayoutMode::kAuto && config.layout_probe) {
    check_config_agreement(config, *world);  // the probe is collective: agree first
    // The ranks measure the machine together (every rank gets the same figures, so every rank
    // makes the same choice) and plan with those figures.
    const plan::AutoLayout chosen = plan::apply_auto_layout(config, plan::probe_machine(*world));
    if (world->rank() == 0) announce_auto_layout(chosen, "probed");
    validate_config(config);
  }
  TrainResult r = train(config, *world);
  if (world->rank() == 0) {
    std::printf("\ndone: %lld steps, loss %.4f -> %.4f, %.0f tokens/s, %.1f s\n",
                static_cast<long long>(r.steps), r.initial_loss, r.final_loss, r.tokens_per_s,
                r.wall_s);
    for (const auto& [task, acc] : r.task_accuracy)
      std::printf("  %-8s accuracy %5.1f %%\n", task.c_str(), acc * 100);
    std::printf("wrote %s/summary.json, %s/report.html, %s/metrics.jsonl\n", c.out.c_str(),
                c.out.c_str(), c.out.c_str());
    std::fflush(stdout);
  }
  world->finalize();
  return 0;
}

// This process is a rank (a launcher started it, or nproc is 1), or it launches this node's ranks.
int run(const TrainConfig& c) {
  return run_here_or_on_local_ranks(c.nproc, [&] { return run_rank(c); });
}

}  // namespace

void add_train_command(CLI::App& app) {
  auto a = std::make_shared<TrainArgs>();
  auto* cmd = app.add_subcommand("train",
                                 "Train the MoE GPT (default: the embedded synthetic "
                                 "tasks on 4 local ranks, dp=2 ep=2)");
  cmd->add_option("--config", a->config_file, "TOML file of configuration keys");
  cmd->add_flag("--print-config", a->print_config, "Print the effective configuration and exit");
  const TrainConfig defaults;
  for (const auto& k : train_config_keys()) {
    const std::string f = flag_name(k.name);
    if (k.kind == ConfigKind::kBool) {
      a->flags[k.name] = false;
      cmd->add_flag(f + ",!--no-" + f.substr(2), a->flags[k.name],
                    k.help + " (default " + get_config_value(defaults, k.name) + ")");
    } else {
      a->values[k.name] = "";
      cmd->add_option(f, a->values[k.name],
                      k.help + " (default " + get_config_value(defaults, k.name) + ")");
    }
  }
  add_node_flags(cmd);
  cmd->callback([a, cmd] {
    // Everything is checked here, before any rank starts.
    TrainConfig c = effective_config(*a, cmd);
    // layout = "auto": the choice on the default figures, so that the configuration can be
    // checked (and printed) here; with layout_probe the ranks choose again on measured figures.
    if (c.layout_mode == LayoutMode::kAuto) {
      const plan::AutoLayout chosen = plan::apply_auto_layout(c, plan::MachineSpec());
      if (!c.layout_probe && std::getenv("RANK") == nullptr && !a->print_config)
        announce_auto_layout(chosen, "default");
    }
    if (a->print_config) {
      std::cout << config_to_toml(c);
      const std::string why = check_config(c);
      if (why.empty()) return;
      std::istringstream lines(why);
      std::string line;
      while (std::getline(lines, line)) std::cout << "# invalid: " << line << "\n";
      std::cout.flush();
      throw CLI::RuntimeError(1);
    }
    validate_config(c);
    const int code = run(c);
    if (code != 0) throw CLI::RuntimeError(code);
  });
}

}  // namespace hybridmoe::cli
