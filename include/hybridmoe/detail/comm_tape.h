// comm_tape.h — the communication cache of activation checkpointing (DeepSpeed-TED's
// communication-aware checkpointing): while a checkpointed region runs its forward, the forward
// results of its collectives (token all-to-alls, all-gathers, reduce-scatters, all-reduces, count
// exchanges) are recorded on a tape; when backward recomputes the region, each collective takes
// its result from the tape instead of communicating again. The autograd functions stay the same,
// so the backward of a replayed collective is still its real conjugate (the reverse all-to-all,
// the reduce-scatter of an all-gather, ...).
//
// Every collective started with Taping::kForward (collectives.h: the autograd collectives'
// forwards, the count exchanges, the chunked overlap's forward all-to-alls) consults the tape in
// the comm core's PendingWork; a group of one never communicates and is never taped. Replay checks
// that the recomputed forward asks for the same collective (by name) at every position.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "hybridmoe/dist.h"

namespace hybridmoe::dist {

/// The forward results of the collectives of one region, in call order.
class CommTape {
 public:
  enum class Mode { kRecord, kReplay };

  /// The tape of this thread's innermost CommTapeScope (nullptr outside any, or inside a scope
  /// opened with nullptr), and its mode.
  static CommTape* active();
  static Mode active_mode();

  /// Appends the result of collective `op` (record mode).
  void record(const char* op, const torch::Tensor& result);
  /// The next recorded result, which must come from collective `op` (replay mode). The tape lets
  /// go of it. Raises an error naming both operations when the region asks for another one.
  torch::Tensor replay(const char* op);

  int64_t size() const { return static_cast<int64_t>(entries_.size()); }
  /// Recorded results not yet replayed.
  int64_t remaining() const { return size() - next_; }
  /// Bytes held by the recorded results (those not yet replayed).
  int64_t bytes() const;

 private:
  struct Entry {
    std::string op;
    torch::Tensor value;
  };
  std::vector<Entry> entries_;
  int64_t next_ = 0;
};

/// Makes `tape` (in `mode`) the active tape of this thread for the scope's lifetime; nullptr turns
/// taping off inside the scope. Scopes nest; the destructor restores the previous one.
///
/// Example:
///   CommTape tape;
///   { CommTapeScope rec(&tape, CommTape::Mode::kRecord); y = region(x); }    // communicates
///   { CommTapeScope rep(&tape, CommTape::Mode::kReplay); y2 = region(x); }   // does not
class CommTapeScope {
 public:
  CommTapeScope(CommTape* tape, CommTape::Mode mode);
  ~CommTapeScope();
  CommTapeScope(const CommTapeScope&) = delete;
  CommTapeScope& operator=(const CommTapeScope&) = delete;

 private:
  CommTape* previous_tape_;
  CommTape::Mode previous_mode_;
};

}  // namespace hybridmoe::dist
