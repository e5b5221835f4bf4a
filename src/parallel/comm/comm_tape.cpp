// comm_tape.cpp — see comm_tape.h: the per-thread active tape and recording/replaying results.
#include "hybridmoe/detail/comm_tape.h"

namespace hybridmoe::dist {
namespace {

thread_local CommTape* active_tape = nullptr;
thread_local CommTape::Mode active_tape_mode = CommTape::Mode::kRecord;

}  // namespace

CommTape* CommTape::active() {
  return active_tape;
}

CommTape::Mode CommTape::active_mode() {
  return active_tape_mode;
}

void CommTape::record(const char* op, const torch::Tensor& result) {
  // detach(): the tape shares the storage, not the autograd history of the forward's tensor.
  entries_.push_back({op, result.detach()});
}

torch::Tensor CommTape::replay(const char* op) {
  TORCH_CHECK(next_ < size(), "recompute: the recomputed forward asked for collective '", op,
              "' after all ", size(),
              " collectives of the original forward were replayed; the recomputed region must "
              "run the same collectives (is its routing deterministic?)");
  Entry& e = entries_[next_];
  TORCH_CHECK(e.op == op, "recompute: collective ", next_, " of the recomputed forward is '", op,
              "' but the original forward ran '", e.op,
              "' there; the recomputed region must run the same collectives in the same order");
  ++next_;
  torch::Tensor value = std::move(e.value);
  e.value = torch::Tensor();
  // A fresh TensorImpl on the same storage: the replaying autograd function owns its history.
  return value.detach();
}

int64_t CommTape::bytes() const {
  int64_t total = 0;
  for (int64_t i = next_; i < size(); ++i) {
    const auto& v = entries_[i].value;
    if (v.defined()) total += v.numel() * static_cast<int64_t>(v.element_size());
  }
  return total;
}

CommTapeScope::CommTapeScope(CommTape* tape, CommTape::Mode mode)
    : previous_tape_(active_tape), previous_mode_(active_tape_mode) {
  active_tape = tape;
  active_tape_mode = mode;
}

CommTapeScope::~CommTapeScope() {
  active_tape = previous_tape_;
  active_tape_mode = previous_mode_;
}

}  // namespace hybridmoe::dist
