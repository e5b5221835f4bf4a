// data.h — the training data of `hmoe train`: a byte corpus read from a text file, or the embedded
// synthetic corpus (a mixture of small tasks written as text lines, deterministic by seed) with
// held-out samples per task; batches of byte windows, the same global batch on every rank, and
// each data-parallel rank's share of it.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

namespace hybridmoe {

/// One held-out sample of a synthetic task: the model is given `prompt` (ending in "-> ") and
/// must produce `answer` followed by a newline.
struct TaskSample {
  std::string task;    ///< "sort", "reverse", "add", "copy"
  std::string prompt;  ///< e.g. "sort: 3914 -> "
  std::string answer;  ///< e.g. "1349"
};

/// The names of the synthetic tasks that have answers, in report order.
const std::vector<std::string>& synthetic_task_names();

/// A byte corpus and, for the synthetic one, held-out samples.
///
/// Example:
///   Corpus c = Corpus::synthetic(/*seed=*/1, /*train_lines=*/20000, /*eval_per_task=*/50);
///   auto [x, y] = c.batch(/*seed=*/1, /*step=*/0, /*micro=*/0, /*batch=*/16, /*seq_len=*/64);
class Corpus {
 public:
  /// The embedded corpus: `train_lines` lines mixing sort / reverse / add / copy tasks and
  /// English-like sentences; `eval_per_task` further samples per task that never occur as a
  /// training line. Deterministic in seed.
  static Corpus synthetic(uint64_t seed, int64_t train_lines, int64_t eval_per_task);
  /// Every byte of a text file (no held-out samples). Raises an error naming the path when it
  /// cannot be read or is shorter than 2 bytes.
  static Corpus from_file(const std::string& path);

  /// The global batch of micro-batch `micro` of optimizer step `step`: `batch` windows of
  /// seq_len + 1 bytes at offsets drawn from (seed, step, micro). Returns (inputs [batch, seq_len],
  /// targets [batch, seq_len]) int64, targets shifted by one.
  std::pair<torch::Tensor, torch::Tensor> batch(uint64_t seed, int64_t step, int64_t micro,
                                                int64_t batch, int64_t seq_len) const;

  const std::string& text() const { return text_; }
  const std::vector<TaskSample>& held_out() const { return held_out_; }
  std::string source() const { return source_; }

 private:
  std::string text_;
  torch::Tensor bytes_;  // [N] int64
  std::vector<TaskSample> held_out_;
  std::string source_;
};

/// Rows [dp_rank * n / dp, (dp_rank + 1) * n / dp) of a global batch. x: [n, ...], n % dp == 0.
torch::Tensor shard_batch(const torch::Tensor& x, int64_t dp, int64_t dp_rank);

}  // namespace hybridmoe
