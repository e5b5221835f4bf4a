// commands.h — the subcommands of the hmoe program. Each add_* registers one subcommand on the
// app and sets its callback; the callback's exit code is returned through CLI::RuntimeError.
#pragma once

#include <string>
#include <vector>

#include <CLI/CLI.hpp>

namespace hybridmoe::cli {

void add_bench_command(CLI::App& app);
void add_launch_command(CLI::App&);
void add_verify_command(CLI::App& app);
void add_train_command(CLI::App&);
void add_generate_command(CLI::App&);
void add_plan_command(CLI::App& app);

/// The command line this program was started with (argv[0] replaced by /proc/self/exe), so a
/// subcommand can re-launch itself on several ranks.
std::vector<std::string> self_command();
/// Remembers argv for self_command(); called once by main().
void set_self_command(int argc, char** argv);

}  // namespace hybridmoe::cli
