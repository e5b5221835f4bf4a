// launch_command.cpp — `hmoe launch [--nnodes N --node-rank R --master-addr A --master-port P]
// --nproc-per-node K [--timeout S] -- CMD...`: runs this node's K ranks of a command with
// torchrun's variables (see dist::launch_local), flags with torchrun's meaning; one node
// (127.0.0.1) unless told otherwise. Exits with the failing rank's code.
#include <memory>
#include <string>
#include <vector>

#include "hmoe/commands.h"
#include "hybridmoe/dist.h"

namespace hybridmoe::cli {

void add_launch_command(CLI::App& app) {
  struct Args {
    int64_t nproc = 2;
    int64_t nnodes = 1;
    int64_t node_rank = 0;
    std::string master_addr = "127.0.0.1";
    double timeout_s = 0.0;
    double max_time_s = 0.0;
    int64_t port = 0;
    bool no_prefix = false;
    std::vector<std::string> command;
  };
  auto args = std::make_shared<Args>();
  auto* launch = app.add_subcommand(
      "launch",
      "Run this node's ranks of a command with RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, "
      "GROUP_RANK, MASTER_ADDR and MASTER_PORT set (one intra-op thread each unless "
      "OMP_NUM_THREADS is set); torchrun's flags and meaning");
  launch->add_option("--nproc-per-node,--nproc,-n", args->nproc, "Ranks on this node")
      ->check(CLI::Range(int64_t{1}, int64_t{1024}))
      ->capture_default_str();
  launch->add_option("--nnodes", args->nnodes, "Nodes of the run")
      ->check(CLI::Range(int64_t{1}, int64_t{65536}))
      ->capture_default_str();
  launch
      ->add_option("--node-rank", args->node_rank,
                   "This node's index in [0, nnodes): it runs ranks node-rank * nproc-per-node ...")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  launch
      ->add_option("--master-addr", args->master_addr,
                   "Address of node 0, where rank 0 serves the rendezvous")
      ->capture_default_str();
  launch
      ->add_option("--timeout", args->timeout_s,
                   "Collective timeout of the ranks in seconds (HMOE_TIMEOUT_S); 0: default")
      ->capture_default_str();
  launch
      ->add_option("--max-time", args->max_time_s,
                   "End every rank after this many seconds (exit 124); 0: no limit")
      ->capture_default_str();
  launch
      ->add_option("--master-port,--port", args->port,
                   "Rendezvous port; 0: a free one on one node, 29500 across nodes")
      ->capture_default_str();
  launch->add_flag("--no-prefix", args->no_prefix, "Do not prefix output lines with [rank R]");
  launch->add_option("command", args->command, "The command to run on every rank (after --)")
      ->required();
  launch->callback([args] {
    TORCH_CHECK(args->node_rank < args->nnodes, "--node-rank should be in [0, ", args->nnodes,
                ") for --nnodes ", args->nnodes, ", got ", args->node_rank);
    dist::LaunchOptions options;
    options.nproc = args->nproc;
    options.nnodes = args->nnodes;
    options.node_rank = args->node_rank;
    options.master_addr = args->master_addr;
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
