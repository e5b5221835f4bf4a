// data.h — the training data of `hmoe train`: a byte corpus read from a text file, the embedded
// synthetic corpus (a mixture of small tasks written as text lines, deterministic by seed) with
// held-out samples per task, or a flat file of token ids (nanoGPT's / Megatron's preprocessed
// .bin, mapped); batches of windows, the same global batch on every rank, and each data-parallel
// rank's share of it.
#pragma once

#include <cstdint>
#include <memory>
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

/// The width of the ids of a token file: 2 or 4 bytes, little-endian. Text: "uint16", "uint32".
///
/// Example:
///   parse_token_dtype("uint32");       // TokenDType::kUInt32
///   token_width(TokenDType::kUInt16);  // 2
enum class TokenDType { kUInt16, kUInt32 };
TokenDType parse_token_dtype(const std::string& text);
std::string to_string(TokenDType dtype);
/// Bytes per id.
int64_t token_width(TokenDType dtype);

/// The names of the synthetic tasks that have answers, in report order.
const std::vector<std::string>& synthetic_task_names();

namespace detail {
struct MappedTokens;  // a token file mapped into memory (data.cpp)
}

/// A training corpus — bytes (a text file, the synthetic tasks) or token ids (a token file) —
/// and, for the synthetic one, held-out samples.
///
/// Example:
///   Corpus c = Corpus::synthetic(/*seed=*/1, /*train_lines=*/20000, /*eval_per_task=*/50);
///   auto [x, y] = c.batch(/*seed=*/1, /*step=*/0, /*micro=*/0, /*batch=*/16, /*seq_len=*/64);
///   Corpus t = Corpus::from_tokens("train.bin", TokenDType::kUInt16, /*vocab_size=*/50304,
///                                  /*seq_len=*/64);
class Corpus {
 public:
  /// The embedded corpus: `train_lines` lines mixing sort / reverse / add / copy tasks and
  /// English-like sentences; `eval_per_task` further samples per task that never occur as a
  /// training line. Deterministic in seed.
  static Corpus synthetic(uint64_t seed, int64_t train_lines, int64_t eval_per_task);
  /// Every byte of a text file (no held-out samples). Raises an error naming the path when it
  /// cannot be read or is shorter than 2 bytes.
  static Corpus from_file(const std::string& path);
  /// The token ids of a flat file of `dtype` ids, little-endian, back to back (mapped, not read;
  /// no held-out samples). Raises an error naming the path when it cannot be opened, when its
  /// size is not a multiple of the id width, when it holds fewer than seq_len + 2 ids, or at
  /// the first id >= vocab_size (naming its position, the id and vocab_size).
  static Corpus from_tokens(const std::string& path, TokenDType dtype, int64_t vocab_size,
                            int64_t seq_len);

  /// The global batch of micro-batch `micro` of optimizer step `step`: `batch` windows of
  /// seq_len + 1 tokens (bytes or ids) at offsets drawn from (seed, step, micro) — the same
  /// draw for bytes and ids. Returns (inputs [batch, seq_len], targets [batch, seq_len]) int64,
  /// targets shifted by one.
  std::pair<torch::Tensor, torch::Tensor> batch(uint64_t seed, int64_t step, int64_t micro,
                                                int64_t batch, int64_t seq_len) const;

  /// The tokens (bytes or ids) of the corpus.
  int64_t size() const;
  /// The text of a byte corpus ("" for token ids).
  const std::string& text() const { return text_; }
  const std::vector<TaskSample>& held_out() const { return held_out_; }
  std::string source() const { return source_; }

 private:
  std::string text_;
  torch::Tensor bytes_;                                 // [N] int64; undefined for token ids
  std::shared_ptr<const detail::MappedTokens> tokens_;  // set for token ids
  std::vector<TaskSample> held_out_;
  std::string source_;
};

/// Rows [dp_rank * n / dp, (dp_rank + 1) * n / dp) of a global batch. x: [n, ...], n % dp == 0.
torch::Tensor shard_batch(const torch::Tensor& x, int64_t dp, int64_t dp_rank);

}  // namespace hybridmoe
