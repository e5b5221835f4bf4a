// main.cpp — the hmoe command-line program: one binary, one subcommand per job.
#include <iostream>

#include <c10/util/Exception.h>
#include <CLI/CLI.hpp>

#include "hmoe/commands.h"
#include "hybridmoe/cpu_runtime.h"
#include "hybridmoe/version.h"

int main(int argc, char** argv) {
  CLI::App app{"hmoe — hybridmoe, Mixture-of-Experts training in C++"};
  app.set_version_flag("--version", std::string("hmoe ") + hybridmoe::kVersion);
  app.require_subcommand(1);
  hybridmoe::cli::add_bench_command(app);
  hybridmoe::cli::add_launch_command(app);
  hybridmoe::cli::add_verify_command(app);
  hybridmoe::cli::add_train_command(app);
  hybridmoe::cli::add_generate_command(app);
  hybridmoe::cli::add_plan_command(app);
  hybridmoe::cli::add_checkpoint_command(app);
  hybridmoe::cli::add_hf_commands(app);
  hybridmoe::cli::set_self_command(argc, argv);
  // Large buffers are reused from step to step instead of mapped afresh (cpu_runtime.h).
  hybridmoe::install_cpu_buffer_cache();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const c10::Error& e) {
    std::cerr << "hmoe: error: " << e.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "hmoe: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
