// launch_command.cpp — `hmoe launch --nproc N [--timeout S] -- CMD...`: runs N local ranks of a
// command with torchrun's variables (see dist::launch_local) and exits with the failing rank's
// code.
#include <memory>
#include <string>
#include <vector>

#include "hmoe/commands.h"
#include "hybridmoe/dist.h"

namespace hybridmoe::cli {

void add_launch_command(CLI::App& app) {
  struct Args {
    int64_t nproc = 2;
    double timeout_s = 0.0;
    double max_time_s = 0.0;
    int64_t port = 0;
    bool no_prefix = false;
    std::vector<std::string> command;
  };
  auto args = std::make_shared<Args>();
  auto* launch = app.add_subcommand(
      "launch",
      "Run N local ranks of a command with RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and "
      "MASTER_PORT set (one intra-op thread each unless OMP_NUM_THREADS is set)");
  launch->add_option("--nproc,-n", args->nproc, "Number of ranks")
      ->check(CLI::Range(int64_t{1}, int64_t{1024}))
      ->capture_default_str();
  launch
      ->add_option("--timeout", args->timeout_s,
                   "Collective timeout of the ranks in seconds (HMOE_TIMEOUT_S); 0: default")
      ->capture_default_str();
  launch
      ->add_option("--max-time", args->max_time_s,
                   "End every rank after this many seconds (exit 124); 0: no limit")
      ->capture_default_str();
  launch->add_option("--port", args->port, "Rendezvous port; 0: a free one")->capture_default_str();
  launch->add_flag("--no-prefix", args->no_prefix, "Do not prefix output lines with [rank R]");
  launch->add_option("command", args->command, "The command to run on every rank (after --)")
      ->required();
  launch->callback([args] {
    dist::LaunchOptions options;
    options.nproc = args->nproc;
    options.command = args->command;
    options.timeout_s = args->timeout_s;
    options.max_time_s = args->max_time_s;
    options.master_port = args->port;
    options.prefix_output = !args->no_prefix;
    const dist::LaunchResult result = dist::launch_local(options);
    if (result.exit_code != 0) throw CLI::RuntimeError(result.exit_code);
  });
}

}  // namespace hybridmoe::cli
