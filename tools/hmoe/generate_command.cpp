// generate_command.cpp — `hmoe generate`: continues a prompt on one process, greedy or sampled.
//   --checkpoint DIR --prompt TEXT       the byte-level model of a training checkpoint (text)
//   --hf DIR --prompt-ids 1,2,3          a Hugging Face model directory, token ids in and out
//   --checkpoint DIR --prompt-ids 1,2,3  a checkpoint of a token model (e.g. one imported from HF)
#include <cstdio>
#include <filesystem>
#include <memory>

#include "hmoe/commands.h"
#include "hybridmoe/train.h"

namespace hybridmoe::cli {

namespace {

// Greedy continuation of `ids` by `max_new` tokens (stopping at the context).
std::vector<int64_t> greedy_ids(GPTImpl& model, std::vector<int64_t> ids, int64_t max_new) {
  torch::NoGradGuard ng;
  model.eval();
  for (int64_t id : ids)
    TORCH_CHECK(id >= 0 && id < model.options.vocab_size(), "--prompt-ids: id ", id,
                " is outside the vocabulary [0, ", model.options.vocab_size(), ")");
  for (int64_t i = 0; i < max_new && static_cast<int64_t>(ids.size()) < model.options.context();
       ++i) {
    auto logits = model.forward(torch::tensor(ids).view({1, -1})).logits;
    ids.push_back(logits[0][-1].argmax().item<int64_t>());
  }
  return ids;
}

}  // namespace

std::string resolve_checkpoint(const std::string& given, const std::string& command) {
  if (given.empty() || std::filesystem::exists(std::filesystem::path(given) / "checkpoint.meta"))
    return given;
  const ResumePoint p = find_resume_checkpoint(given);
  TORCH_CHECK(!p.dir.empty(), command, ": ", given,
              " is neither a checkpoint nor a run directory with a complete checkpoint: ", p.note);
  if (!p.note.empty()) std::fprintf(stderr, "%s: %s\n", command.c_str(), p.note.c_str());
  return p.dir;
}

void add_generate_command(CLI::App& app) {
  struct Args {
    std::string checkpoint, hf, prompt, prompt_ids, allow_unused;
    int64_t max_new = 64;
    double temperature = 0.0;
    int64_t seed = 0;
    bool stop_at_newline = true;
  };
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("generate", "Continue a prompt with a trained or imported model");
  cmd->add_option("--checkpoint", a->checkpoint,
                  "A checkpoint directory (OUT/checkpoints/step_N) or a training OUT directory "
                  "(its latest checkpoint)");
  cmd->add_option("--hf", a->hf, "A Hugging Face model directory (with --prompt-ids)");
  cmd->add_option("--prompt", a->prompt, "Text to continue (byte-level models)");
  cmd->add_option("--prompt-ids", a->prompt_ids,
                  "Token ids to continue, comma-separated (greedy; prints the ids)");
  cmd->add_option("--allow-unused", a->allow_unused, "With --hf: tensors deliberately unused");
  cmd->add_option("--max-new", a->max_new, "Most bytes (tokens) to generate")
      ->capture_default_str();
  cmd->add_option("--temperature", a->temperature, "0: greedy; > 0: sampling (text only)")
      ->capture_default_str();
  cmd->add_option("--seed", a->seed, "Sampling seed")->capture_default_str();
  cmd->add_flag("--stop-at-newline,!--no-stop-at-newline", a->stop_at_newline,
                "Stop at the first newline (default on; text only)");
  cmd->callback([a] {
    TORCH_CHECK(a->prompt.empty() != a->prompt_ids.empty(),
                "generate: expected exactly one of --prompt and --prompt-ids");
    TORCH_CHECK(a->max_new >= 0, "generate: max_new (--max-new) should be >= 0, got ", a->max_new);
    const std::string dir = resolve_checkpoint(a->checkpoint, "generate");
    if (!a->prompt_ids.empty()) {
      TORCH_CHECK(a->temperature == 0.0,
                  "generate --prompt-ids: only greedy decoding "
                  "(--temperature 0), got ",
                  a->temperature);
      GPT model = load_model_for_inference(a->hf, dir, torch::kFloat32, a->allow_unused);
      const auto ids = greedy_ids(*model, parse_id_list(a->prompt_ids, "--prompt-ids"), a->max_new);
      for (size_t i = 0; i < ids.size(); ++i)
        std::printf("%s%lld", i ? "," : "", static_cast<long long>(ids[i]));
      std::printf("\n");
      return;
    }
    TORCH_CHECK(a->hf.empty(),
                "generate --hf: expected --prompt-ids (a Hugging Face model's "
                "input is token ids, not text)");
    TORCH_CHECK(!dir.empty(), "generate: expected --checkpoint");
    GPT model = load_full_model(dir);
    const std::string text = generate_text(*model, a->prompt, a->max_new, a->temperature,
                                           static_cast<uint64_t>(a->seed), a->stop_at_newline);
    std::printf("%s%s\n", a->prompt.c_str(), text.c_str());
  });
}

}  // namespace hybridmoe::cli
