// safetensors.h — the .safetensors format (Hugging Face's checkpoint files), read and written here
// (Debian has no package for it): an 8-byte little-endian header length, a JSON header naming each
// tensor's dtype, shape and byte range, then the row-major little-endian data. Reading maps the
// file and makes tensors over the mapping (no copy of the shard); every inconsistency of a file is
// refused with an error naming the file and the tensor. Writing is atomic.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

namespace hybridmoe::safetensors {

/// One tensor of a file: its name, dtype, shape and byte range within the data section.
struct TensorInfo {
  std::string name;
  torch::ScalarType dtype = torch::kFloat32;
  std::string dtype_name;  ///< as in the file: F32, F16, BF16, F64, I64, I32, U8 or BOOL
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  ///< [begin, end) relative to the data section
};

/// A read-only .safetensors file (mapped), or the same bytes held in memory.
///
/// Example:
///   auto f = safetensors::File::open("model-00001-of-00002.safetensors");
///   torch::Tensor w = f.get("model.layers.0.mlp.gate.weight");    // over the mapping, no copy
///   torch::Tensor part = f.get("lm_head.weight").narrow(0, 0, 128).clone();  // reads one slice
class File {
 public:
  /// Maps `path` and checks its header: refused (naming the file, and the tensor where there is
  /// one) when the header length runs past the end, the JSON does not parse or does not start
  /// with '{', an entry lacks or mistypes dtype / shape / data_offsets, a dtype is unknown, a
  /// shape does not match its byte count, offsets are out of range, overlap or leave holes, or a
  /// name repeats.
  static File open(const std::string& path);
  /// The same checks on bytes in memory (`origin` names them in errors).
  static File from_bytes(std::string bytes, const std::string& origin);

  /// The tensors in the order of their data.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  /// The optional `__metadata__` (string to string).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool contains(const std::string& name) const { return index_.count(name) > 0; }
  const TensorInfo& info(const std::string& name) const;
  /// The tensor `name` over the file's bytes (CPU, read-only in spirit: do not write to it); it
  /// keeps the mapping alive. Data at an address not aligned for its dtype are copied.
  torch::Tensor get(const std::string& name) const;
  const std::string& origin() const { return origin_; }

 private:
  struct Bytes;
  static File parse(std::shared_ptr<const Bytes> bytes, const std::string& origin);

  std::shared_ptr<const Bytes> bytes_;
  std::string origin_;
  uint64_t data_start_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

/// The file's bytes for `tensors` (in the given order) and `metadata`: the header padded with
/// spaces to a multiple of 8 bytes, then each tensor's data (made contiguous, on the CPU).
/// Refused: an empty or repeated name, a dtype outside F32, F16, BF16, F64, I64, I32, U8, BOOL.
std::string serialize(const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

/// Writes serialize(tensors, metadata) to `path` atomically and durably, as checkpoints are: a
/// temporary file beside it, flushed to disk and size-checked, renamed over `path`, the directory
/// synced; on any failure `path` is untouched and nothing is left beside it.
void save(const std::string& path,
          const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
          const std::map<std::string, std::string>& metadata = {});

}  // namespace hybridmoe::safetensors
