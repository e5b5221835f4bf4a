// run_dir.cpp — see run_dir.h.
#include "run_dir.h"

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "hybridmoe/collectives.h"

namespace hybridmoe::detail {

namespace fs = std::filesystem;

namespace {

// Every rank raises rank 0's error, if it had one (one gather of a flag).
void fail_together(const std::string& problem, const ParallelGroups& groups,
                   const std::string& others) {
  const auto& world = groups.world;
  const int64_t failed = world.size() > 1
                             ? dist::all_gather_counts(problem.empty() ? 0 : 1, world)[0]
                             : (problem.empty() ? 0 : 1);
  TORCH_CHECK(failed == 0, problem.empty() ? others : problem);
}

}  // namespace

bool holds_run(const std::string& out) {
  std::error_code ec;
  return fs::exists(fs::path(out) / "metrics.jsonl", ec) ||
         fs::exists(fs::path(out) / "summary.json", ec) ||
         fs::exists(fs::path(out) / "checkpoints", ec);
}

void prepare_run_dir(const TrainConfig& cfg, const ParallelGroups& groups) {
  std::string problem;
  if (groups.world.rank == 0) {
    try {
      std::error_code ec;
      TORCH_CHECK(!fs::exists(cfg.out, ec) || fs::is_directory(cfg.out, ec), "out: ", cfg.out,
                  " exists and is not a directory");
      if (holds_run(cfg.out)) {
        TORCH_CHECK(cfg.overwrite, "out: ", cfg.out,
                    " already holds a run (metrics.jsonl, summary.json or checkpoints); "
                    "continue it with --resume, start afresh with --overwrite (the old run is "
                    "moved aside, not deleted), or choose another --out");
        std::string aside;
        for (int64_t n = 1;; ++n) {
          aside = cfg.out + ".old-" + std::to_string(n);
          if (!fs::exists(aside, ec)) break;
        }
        fs::rename(cfg.out, aside);
        std::printf("overwrite: moved the earlier run in %s to %s\n", cfg.out.c_str(),
                    aside.c_str());
        std::fflush(stdout);
      }
      fs::create_directories(cfg.out);
    } catch (const c10::Error& e) {
      problem = e.what_without_backtrace();
    } catch (const std::exception& e) {
      problem = std::string("out: ") + cfg.out + ": " + e.what();
    }
  }
  fail_together(problem, groups, "rank 0 refused the output directory " + cfg.out);
}

std::string choose_resume_checkpoint(const TrainConfig& cfg, const ParallelGroups& groups) {
  std::string problem;
  int64_t step = -1;
  if (groups.world.rank == 0) {
    const ResumePoint p = find_resume_checkpoint(cfg.out);
    if (p.dir.empty()) {
      problem =
          "--resume: no checkpoint under " + cfg.out + "/checkpoints to resume from: " + p.note;
    } else {
      if (!p.note.empty()) std::printf("resume: %s\n", p.note.c_str());
      std::fflush(stdout);
      const std::string name = fs::path(p.dir).filename().string();
      const bool step_name = name.rfind("step_", 0) == 0 && name.size() > 5 && name.size() < 20 &&
                             name.find_first_not_of("0123456789", 5) == std::string::npos;
      if (step_name) {
        step = std::stoll(name.substr(5));
      } else {
        problem = "--resume: " + cfg.out + "/checkpoints/latest names \"" + name +
                  "\", expected a step directory step_NNNNNN";
      }
    }
  }
  fail_together(problem, groups, "--resume: rank 0 found no checkpoint under " + cfg.out);
  if (groups.world.size() > 1) step = dist::all_gather_counts(step, groups.world)[0];
  return checkpoint_dir(cfg.out, step);
}

KeptMetrics read_metrics_until(const std::string& path, int64_t step) {
  KeptMetrics kept;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    long long s = -1;
    double loss = 0;
    const int got = std::sscanf(line.c_str(), "{\"step\": %lld, \"loss\": %lf", &s, &loss);
    if (got < 1 || s > step) continue;
    kept.lines.push_back(line);
    if (got == 2) kept.curve.emplace_back(s, loss);
  }
  return kept;
}

}  // namespace hybridmoe::detail
