// commands.h — the subcommands of the hmoe program. Each add_* registers one subcommand on the
// app and sets its callback; the callback's exit code is returned through CLI::RuntimeError.
#pragma once

#include <CLI/CLI.hpp>

namespace hybridmoe::cli {

void add_bench_command(CLI::App& app);

}  // namespace hybridmoe::cli
