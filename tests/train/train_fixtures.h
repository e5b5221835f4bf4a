// train_fixtures.h — what the trainer tests share: a scratch directory per test, a tiny
// single-process configuration, and small text and file helpers.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "hybridmoe/train.h"

namespace hybridmoe::testing {

inline std::string test_dir(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("hmoe_train_test_" + std::to_string(getuid())) /
          name)
      .string();
}

// A tiny single-process configuration that runs in about a second.
inline TrainConfig tiny_config(const std::string& out) {
  TrainConfig c;
  c.d_model = 32;
  c.n_layers = 2;
  c.n_heads = 2;
  c.context = 32;
  c.seq_len = 32;
  c.moe_every = 2;
  c.num_experts = 4;
  c.batch_size = 8;
  c.steps = 12;
  c.warmup_steps = 3;
  c.train_lines = 2000;
  c.eval_per_task = 4;
  c.nproc = 1;
  c.tp = c.dp = c.pp = c.ep = c.etp = 1;
  c.micro_batches = 1;
  c.out = out;
  c.progress = false;
  c.eval = false;
  c.checkpoint_every = 0;
  return c;
}

inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

inline std::map<std::string, std::string> snapshot(const std::string& dir) {
  std::map<std::string, std::string> files;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir))
    if (e.is_regular_file()) files[e.path().string()] = read_file(e.path().string());
  return files;
}

/// True when `text` contains `needle`.
inline bool has(const std::string& text, const std::string& needle) {
  return text.find(needle) != std::string::npos;
}

/// The temporary files (".tmp_*", "*.tmp") left anywhere under `dir`.
inline std::vector<std::string> tmp_entries(const std::string& dir) {
  std::vector<std::string> out;
  if (!std::filesystem::exists(dir)) return out;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir)) {
    const auto name = e.path().filename().string();
    if (name.rfind(".tmp_", 0) == 0 || (name.size() > 4 && name.substr(name.size() - 4) == ".tmp"))
      out.push_back(e.path().string());
  }
  return out;
}

}  // namespace hybridmoe::testing
