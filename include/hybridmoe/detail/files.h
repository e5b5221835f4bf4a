// files.h — durable file writes, shared by checkpoints, Hugging Face exports, reports and the
// command-line tools: a file is complete under its name or absent, never half-written.
#pragma once

#include <string>

namespace hybridmoe::detail {

/// Writes `bytes` to `path` durably: into path + ".tmp" (every write checked), fsync, size
/// checked, renamed over `path`, the directory fsynced. Throws c10::Error naming the path and the
/// errno text (ENOSPC, EIO, ...) and removes the temporary; `path` is then untouched.
/// Test hook: with HMOE_FAULT_WRITE set to a non-empty string, a write to a path containing it
/// stops after half its bytes with ENOSPC (what a full disk does).
void write_file_durable(const std::string& path, const std::string& bytes);
}  // namespace hybridmoe::detail
