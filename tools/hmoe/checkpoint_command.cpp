// checkpoint_command.cpp — `hmoe checkpoint verify DIR` checks a run's checkpoints without
// training. `hmoe checkpoint convert DIR --to-layout tp,dp,pp,ep,etp --out OUT`:
// rewrites a training checkpoint for another parallel layout (experts redistributed, tensor
// parallel shards re-split, optimizer state resharded). It launches the target layout's ranks
// locally, each loading its shard from the checkpoint's consolidated files.
#include <cstdio>
#include <filesystem>
#include <memory>
#include <sstream>

#include "hmoe/commands.h"
#include "hybridmoe/dist.h"
#include "hybridmoe/train.h"

namespace hybridmoe::cli {

namespace {

struct ConvertArgs {
  std::string dir, to_layout, out;
  int64_t zero_stage = -1;  ///< -1: the checkpoint's
};

// The checkpoint's configuration moved to the requested layout.
TrainConfig target_config(const ConvertArgs& a) {
  TrainConfig c = read_checkpoint_config(a.dir);
  set_layout_from_list(c, a.to_layout);
  if (a.zero_stage >= 0) c.zero_stage = a.zero_stage;
  c.out = a.out;
  c.resume = false;
  c.progress = true;
  validate_config(c);
  return c;
}

}  // namespace

void set_layout_from_list(TrainConfig& c, const std::string& text) {
  std::vector<int64_t> v = parse_id_list(text, "--to-layout");
  TORCH_CHECK(v.size() == 5, "--to-layout: expected five numbers tp,dp,pp,ep,etp, got \"", text,
              "\"");
  c.tp = v[0];
  c.dp = v[1];
  c.pp = v[2];
  c.ep = v[3];
  c.etp = v[4];
  c.nproc = c.tp * c.dp * c.pp;
}

void add_checkpoint_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("checkpoint", "Work on training checkpoints");
  cmd->require_subcommand(1);
  auto a = std::make_shared<ConvertArgs>();
  auto* conv = cmd->add_subcommand("convert", "Rewrite a checkpoint for another parallel layout");
  conv->add_option("dir", a->dir, "Checkpoint directory (e.g. out/checkpoints/step_001200)")
      ->required();
  conv->add_option("--to-layout", a->to_layout, "Target layout tp,dp,pp,ep,etp")->required();
  conv->add_option("--zero-stage", a->zero_stage, "Target ZeRO stage (default: the checkpoint's)");
  conv->add_option("--out", a->out, "Output directory (its checkpoints/ receives the result)")
      ->required();
  add_node_flags(conv);
  conv->callback([a] {
    const TrainConfig target = target_config(*a);
    const int code = run_here_or_on_local_ranks(target.nproc, [&] {
      auto world = dist::init();
      at::set_num_threads(1);
      convert_checkpoint(a->dir, target, *world);
      if (world->rank() == 0)
        std::printf("wrote %s (layout %s, zero_stage %lld)\n",
                    latest_checkpoint(target.out).c_str(), target.layout().to_string().c_str(),
                    static_cast<long long>(target.zero_stage));
      world->finalize();
      return 0;
    });
    if (code != 0) throw CLI::RuntimeError(code);
  });

  auto verify_dir = std::make_shared<std::string>();
  auto* ver = cmd->add_subcommand(
      "verify",
      "Check a run's checkpoints (or one checkpoint) without training: metadata, every "
      "file's checksum and size; exit 1 if any fails");
  ver->add_option("dir", *verify_dir, "A run's output directory, or one checkpoint directory")
      ->required();
  ver->callback([verify_dir] {
    const std::string dir = *verify_dir;
    const bool one = std::filesystem::exists(std::filesystem::path(dir) / "checkpoint.meta");
    const std::vector<std::string> dirs =
        one ? std::vector<std::string>{dir} : list_checkpoints(dir);
    TORCH_CHECK(!dirs.empty(), "checkpoint verify: ", dir,
                " holds no checkpoint (expected a run directory with checkpoints/step_NNNNNN, or "
                "a checkpoint directory with checkpoint.meta)");
    int64_t failed = 0;
    for (const auto& d : dirs) {
      const std::string problem = verify_checkpoint(d);
      failed += problem.empty() ? 0 : 1;
      std::printf("%s %s%s%s\n", problem.empty() ? "ok  " : "FAIL", d.c_str(),
                  problem.empty() ? "" : ": ", problem.c_str());
    }
    if (!one) {
      const ResumePoint p = find_resume_checkpoint(dir);
      std::printf("latest: %s\n",
                  latest_checkpoint(dir).empty() ? "(none)" : latest_checkpoint(dir).c_str());
      std::printf("--resume would continue from: %s%s%s\n",
                  p.dir.empty() ? "(nothing)" : p.dir.c_str(), p.note.empty() ? "" : " — ",
                  p.note.c_str());
    }
    std::printf("%lld of %zu checkpoint(s) pass\n", static_cast<long long>(dirs.size() - failed),
                dirs.size());
    std::fflush(stdout);
    if (failed > 0) throw CLI::RuntimeError(1);
  });
}

}  // namespace hybridmoe::cli
