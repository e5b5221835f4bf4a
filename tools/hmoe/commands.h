// commands.h — the subcommands of the hmoe program. Each add_* registers one subcommand on the
// app and sets its callback; the callback's exit code is returned through CLI::RuntimeError.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "hybridmoe/model.h"
#include "hybridmoe/train.h"

namespace hybridmoe::cli {

void add_bench_command(CLI::App& app);
/// `bench a2a` under the `bench` subcommand (bench_a2a_command.cpp).
void add_bench_a2a_command(CLI::App* bench);
void add_launch_command(CLI::App&);
void add_verify_command(CLI::App& app);
void add_train_command(CLI::App&);
void add_generate_command(CLI::App&);
void add_plan_command(CLI::App& app);
void add_checkpoint_command(CLI::App& app);
/// `convert` (Hugging Face checkpoints in and out) and `logits`.
void add_hf_commands(CLI::App& app);

/// Sets tp, dp, pp, ep, etp and nproc from "tp,dp,pp,ep,etp" (--to-layout); refused otherwise.
void set_layout_from_list(TrainConfig& config, const std::string& text);
/// `given` when it is a checkpoint directory (or empty); for a run directory, its newest
/// checkpoint that passes its checks (as --resume picks it; a passed-over `latest` is said on
/// stderr, prefixed by `command`). Refused naming `given` when there is none.
std::string resolve_checkpoint(const std::string& given, const std::string& command);
/// The command-line flag of a configuration key: "--" and the key with '_' written '-'
/// (flag_name("micro_batches") == "--micro-batches").
std::string flag_name(const std::string& key);
/// Comma-separated integers ("1,2,3"); refused naming `flag` otherwise.
std::vector<int64_t> parse_id_list(const std::string& text, const std::string& flag);
/// The single-process model of a Hugging Face directory (`hf_dir`) or of a checkpoint (exactly
/// one of them non-empty), in `dtype`.
GPT load_model_for_inference(const std::string& hf_dir, const std::string& checkpoint,
                             torch::ScalarType dtype, const std::string& allow_unused);

/// The command line this program was started with (argv[0] replaced by /proc/self/exe), so a
/// subcommand can re-launch itself on several ranks.
std::vector<std::string> self_command();
/// Remembers argv for self_command(); called once by main().
void set_self_command(int argc, char** argv);

/// Adds torchrun's node flags to a subcommand that re-launches itself (--nnodes, --node-rank,
/// --master-addr, --master-port): its nproc ranks then lie on nnodes nodes, and this process
/// starts node-rank's nproc / nnodes of them, as `hmoe launch` would. One subcommand runs per
/// process, so the values live in one place that run_here_or_on_local_ranks reads.
void add_node_flags(CLI::App* cmd);

/// Runs `worker` in this process when a launcher (torchrun, mpirun, Slurm) started it or when
/// nproc is 1 on one node; otherwise launches this same command line on this node's ranks (each
/// then runs the worker; nproc over all nodes, see add_node_flags). Returns the exit code.
int run_here_or_on_local_ranks(int64_t nproc, const std::function<int()>& worker);

}  // namespace hybridmoe::cli
