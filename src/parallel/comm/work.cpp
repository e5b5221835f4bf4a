// work.cpp — see work.h: PendingWork (timeout, error text, statistics, tape) and the helpers of
// the comm core.
#include "parallel/comm/work.h"

#include <chrono>
#include <sstream>

#include "hybridmoe/comm_stats.h"
#include "hybridmoe/detail/comm_tape.h"
#include "parallel/runtime/peers.h"

namespace hybridmoe::dist {

using Clock = std::chrono::steady_clock;

/// Everything one operation in flight needs until wait() returns.
struct PendingWork::State {
  detail::WorkSpec spec;
  Group group;
  torch::Tensor result;
  std::vector<torch::Tensor> keep;
  detail::Finish finish;
  c10::intrusive_ptr<c10d::Work> work;
  CommTape* tape = nullptr;  ///< records (or replays) the result at wait()
  bool replaying = false;
  bool done = false;
  Clock::time_point start;
};

PendingWork::PendingWork() = default;
PendingWork::~PendingWork() = default;
PendingWork::PendingWork(PendingWork&&) noexcept = default;
PendingWork& PendingWork::operator=(PendingWork&&) noexcept = default;
PendingWork::PendingWork(std::unique_ptr<State> state) : s_(std::move(state)) {}

PendingWork PendingWork::ready(torch::Tensor result) {
  auto s = std::make_unique<State>();
  s->result = std::move(result);
  s->done = true;
  return PendingWork(std::move(s));
}

bool PendingWork::done() const {
  return !s_ || s_->done;
}

torch::Tensor PendingWork::wait() {
  TORCH_CHECK(s_, "PendingWork::wait: nothing was started");
  State& s = *s_;
  if (s.done) return s.result;
  const char* op = s.spec.op;
  if (s.replaying) {
    auto replayed = s.tape->replay(op);
    TORCH_CHECK(s.finish || replayed.sizes() == s.result.sizes(), op,
                ": the replayed result has shape ", replayed.sizes(),
                ", the recomputed forward expects ", s.result.sizes());
    s.result = replayed;
    s.done = true;
    return s.result;
  }
  // 1. Wait, bounded by the group's timeout from the start of the operation.
  const auto blocked = Clock::now();
  try {
    if (s.result.is_cuda()) {
      s.work->wait();  // stream-ordered; NCCL's watchdog enforces the timeout
    } else {
      const auto spent = std::chrono::duration_cast<std::chrono::milliseconds>(blocked - s.start);
      s.work->wait(std::max(s.group.timeout - spent, std::chrono::milliseconds(1)));
    }
  } catch (const std::exception& e) {
    const double elapsed = std::chrono::duration<double>(Clock::now() - s.start).count();
    const bool timed_out = elapsed * 1000.0 >= 0.99 * static_cast<double>(s.group.timeout.count());
    const std::string why = detail::error_text(e);
    TORCH_CHECK(false, "hybridmoe::dist::", op, " on ", detail::describe(s.group),
                s.spec.peer.empty() ? "" : " with ", s.spec.peer, " failed after ", elapsed,
                " s (timeout ", s.group.timeout.count() / 1000.0, " s)",
                detail::peer_diagnosis(s.group, why), ": ", why,
                timed_out ? " -- a member did not take part in time (it hung, died, or called a "
                            "different collective; HMOE_TIMEOUT_S sets the timeout)"
                          : "");
  }
  // 2. Statistics, 3. the finished result (taped when recording).
  record_comm(op, s.spec.bytes_sent, std::chrono::duration<double>(Clock::now() - blocked).count());
  s.work.reset();
  s.keep.clear();
  if (s.finish) s.result = s.finish(s.result);
  if (s.tape != nullptr) s.tape->record(op, s.result);
  s.done = true;
  return s.result;
}

namespace detail {

std::string describe(const Group& g) {
  std::ostringstream out;
  out << "group '" << g.name << "' (world ranks [";
  for (size_t i = 0; i < g.ranks.size(); ++i) out << (i ? "," : "") << g.ranks[i];
  out << "], this process is group rank " << g.rank << " of " << g.size() << ")";
  return out.str();
}

namespace {
struct GroupHolder : torch::CustomClassHolder {
  explicit GroupHolder(Group g) : group(std::move(g)) {}
  Group group;
};
}  // namespace

c10::IValue pack(const Group& g) {
  return c10::IValue::make_capsule(c10::make_intrusive<GroupHolder>(g));
}

const Group& unpack(const c10::IValue& v) {
  return static_cast<GroupHolder*>(v.toCapsule().get())->group;
}

std::string error_text(const std::exception& e) {
  if (const auto* ce = dynamic_cast<const c10::Error*>(&e)) return ce->what_without_backtrace();
  return e.what();
}

PendingWork start_work(const WorkSpec& spec, const Group& group, torch::Tensor result,
                       std::vector<torch::Tensor> keep, const Launch& launch, Finish finish) {
  TORCH_CHECK(group.is_member(), spec.op, ": this process is not a member of group '", group.name,
              "'");
  auto s = std::make_unique<PendingWork::State>();
  s->spec = spec;
  s->group = group;
  s->result = std::move(result);
  s->finish = std::move(finish);
  s->start = Clock::now();
  // 1. The tape: a recomputed region replays the original forward's result (comm_tape.h); results
  //    are taken from the tape at wait(), the order in which they were recorded.
  if (spec.taping == Taping::kForward && group.size() > 1) {
    s->tape = CommTape::active();
    s->replaying = s->tape != nullptr && CommTape::active_mode() == CommTape::Mode::kReplay;
    if (s->replaying) return PendingWork(std::move(s));
  }
  // 2. Launch on the process group of the result's device.
  try {
    s->work = launch(*group.pg_for(s->result));
  } catch (const std::exception& e) {
    const std::string why = error_text(e);
    TORCH_CHECK(false, "hybridmoe::dist::", spec.op, " on ", describe(group),
                spec.peer.empty() ? "" : " with ", spec.peer, " failed to start",
                peer_diagnosis(group, why), ": ", why);
  }
  s->keep = std::move(keep);
  return PendingWork(std::move(s));
}

torch::Tensor movable(const torch::Tensor& t) {
  return t.scalar_type() == torch::kBFloat16 && !t.is_cuda() ? t.view(torch::kHalf) : t;
}

bool reduces_in_float32(const torch::Tensor& t) {
  return t.scalar_type() == torch::kBFloat16 && !t.is_cuda();
}

torch::Device control_device(const Group& g) {
  TORCH_CHECK(g.pg || g.cuda_pg, "group '", g.name, "' has no process group");
  return g.pg ? torch::Device(torch::kCPU) : torch::Device(torch::kCUDA);
}

void check_splits(const char* op, const char* what, const std::vector<int64_t>& splits,
                  const Group& g) {
  TORCH_CHECK(static_cast<int64_t>(splits.size()) == g.size(), op, ": ", what, " should have ",
              g.size(), " entries (one per rank of group '", g.name, "'), got ", splits.size());
  for (int64_t s : splits) TORCH_CHECK(s >= 0, op, ": ", what, " should be >= 0, got ", s);
}

}  // namespace detail
}  // namespace hybridmoe::dist
