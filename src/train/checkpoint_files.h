// checkpoint_files.h — the files of a checkpoint, below save_checkpoint / load_checkpoint: durable
// writes (written, flushed, fsynced, size checked, renamed, directory fsynced; any failure is an
// error naming the path and the errno text, with the temporary removed), checksums, the strict
// parser of checkpoint.meta, and the listing and retention of a run's checkpoints.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "hybridmoe/detail/files.h"

namespace hybridmoe::detail {

constexpr const char* kMetaFile = "checkpoint.meta";
constexpr const char* kCheckpointFormat = "hybridmoe-checkpoint-1";

/// FNV-1a 64 of a byte string, and its length: a checksum as recorded in checkpoint.meta.
struct Digest {
  uint64_t hash = 0;
  int64_t size = -1;  ///< -1: the file could not be read
};
Digest digest_of_bytes(const std::string& bytes);
Digest digest_of_file(const std::string& path);
/// "hex size", the form checkpoint.meta records.
std::string digest_text(const Digest& d);

/// rename(from, to), then fsync of the directory of `to`. Throws naming both paths and errno.
void rename_durable(const std::string& from, const std::string& to);
/// fsync of a directory (its entries, after a rename or create). Throws naming it and errno.
void fsync_directory(const std::string& dir);

/// Parses checkpoint.meta text strictly: every non-empty line `key = value`, keys unique, the
/// format known, `step` >= 0, `world_size` >= 1, a `shard.R` checksum for every rank R, `model`
/// and `optimizer` checksums, and well-formed checksums. Throws c10::Error naming `origin`, the
/// line and what was expected.
std::map<std::string, std::string> parse_meta(const std::string& text, const std::string& origin);
/// parse_meta of dir/checkpoint.meta; throws when it is missing or unreadable.
std::map<std::string, std::string> read_meta(const std::string& dir);

}  // namespace hybridmoe::detail
