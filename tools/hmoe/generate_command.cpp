// generate_command.cpp — `hmoe generate --checkpoint DIR --prompt TEXT`: continues a prompt with
// the full model of a training checkpoint (greedy, or sampled with --temperature), on one process.
#include <cstdio>
#include <filesystem>
#include <memory>

#include "hmoe/commands.h"
#include "hybridmoe/train.h"

namespace hybridmoe::cli {

void add_generate_command(CLI::App& app) {
  struct Args {
    std::string checkpoint, prompt;
    int64_t max_new = 64;
    double temperature = 0.0;
    int64_t seed = 0;
    bool stop_at_newline = true;
  };
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("generate", "Continue a prompt with a trained checkpoint");
  cmd->add_option("--checkpoint", a->checkpoint,
                  "A checkpoint directory (OUT/checkpoints/step_N) or a training OUT directory "
                  "(its latest checkpoint)")
      ->required();
  cmd->add_option("--prompt", a->prompt, "Text to continue")->required();
  cmd->add_option("--max-new", a->max_new, "Most bytes to generate")->capture_default_str();
  cmd->add_option("--temperature", a->temperature, "0: greedy; > 0: sampling")
      ->capture_default_str();
  cmd->add_option("--seed", a->seed, "Sampling seed")->capture_default_str();
  cmd->add_flag("--stop-at-newline,!--no-stop-at-newline", a->stop_at_newline,
                "Stop at the first newline (default on)");
  cmd->callback([a] {
    // A run directory: the newest checkpoint that passes its checks (like --resume), saying so
    // when `latest` was passed over.
    std::string dir = a->checkpoint;
    if (!std::filesystem::exists(std::filesystem::path(dir) / "checkpoint.meta")) {
      const ResumePoint p = find_resume_checkpoint(dir);
      TORCH_CHECK(
          !p.dir.empty(), "generate: ", dir,
          " is neither a checkpoint nor a run directory with a complete checkpoint: ", p.note);
      if (!p.note.empty()) std::fprintf(stderr, "generate: %s\n", p.note.c_str());
      dir = p.dir;
    }
    GPT model = load_full_model(dir);
    const std::string text = generate_text(*model, a->prompt, a->max_new, a->temperature,
                                           static_cast<uint64_t>(a->seed), a->stop_at_newline);
    std::printf("%s%s\n", a->prompt.c_str(), text.c_str());
  });
}

}  // namespace hybridmoe::cli
