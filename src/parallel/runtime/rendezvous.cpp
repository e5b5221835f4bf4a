// rendezvous.cpp — the start of a multi-process run, bounded by the collective timeout: clients
// wait (with a deadline) for rank 0's store server to accept connections, every rank then marks
// itself arrived in the store and waits for the others. Errors name the ranks that never
// arrived, the master address and port, and the timeout.
#include <algorithm>
#include <sstream>
#include <thread>

#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "hybridmoe/dist.h"
#include "parallel/runtime/peers.h"

namespace hybridmoe::dist {
namespace {

using Clock = std::chrono::steady_clock;

std::string seconds_text(std::chrono::milliseconds t) {
  std::ostringstream s;
  s << static_cast<double>(t.count()) / 1000.0 << " s";
  return s.str();
}

}  // namespace

StorePtr rendezvous(const EnvInfo& info, std::chrono::milliseconds timeout) {
  TORCH_CHECK(info.world_size > 1, "rendezvous: needs a world of 2 or more ranks, got ",
              info.world_size);
  const auto deadline = Clock::now() + timeout;
  const std::string where = info.master_addr + ":" + std::to_string(info.master_port);
  const std::string me = "rank " + std::to_string(info.rank) + ": rendezvous at " + where;
  // 1. Clients wait until rank 0's server accepts connections (c10d's own connect may retry
  //    well past its timeout), retrying refused connections until the deadline.
  if (info.rank != 0) {
    std::string why;
    while (true) {
      why = detail::try_connect(info.master_addr, info.master_port, deadline);
      if (why.empty() || Clock::now() >= deadline) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    TORCH_CHECK(why.empty(), me, " timed out after ", seconds_text(timeout),
                " (HMOE_TIMEOUT_S): rank 0 never arrived (its store server at ", where,
                " did not accept a connection: ", why, ")");
  }
  // 2. The store: rank 0 serves it. Nobody waits in c10d's constructor (LibTorch 1.13 waits for
  //    the workers without a message); the arrival keys below do that with one.
  c10d::TCPStoreOptions options;
  options.port = static_cast<std::uint16_t>(info.master_port);
  options.isServer = info.rank == 0;
  options.waitWorkers = false;
  options.timeout =
      std::max(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()),
               std::chrono::milliseconds(1));
  c10::intrusive_ptr<c10d::TCPStore> store;
  try {
    store = c10::make_intrusive<c10d::TCPStore>(info.master_addr, options);
  } catch (const std::exception& e) {
    TORCH_CHECK(false, me, " failed: ", e.what());
  }
  store->setTimeout(timeout);
  // 3. Every rank marks itself arrived, then waits until all have. Whoever reaches its deadline
  //    first names the absent ranks; rank 0 also publishes them and waits a moment for the
  //    clients to read them before its server goes away.
  const std::string counter = "hmoe/rendezvous/arrived";
  const std::string missing_key = "hmoe/rendezvous/missing";
  const std::string told_key = "hmoe/rendezvous/told";
  auto arrived_key = [](int64_t r) { return "hmoe/rank/" + std::to_string(r) + "/arrived"; };
  std::string missing_text;  // set when the wait ends without every rank
  try {
    store->set(arrived_key(info.rank), std::vector<uint8_t>{'1'});
    int64_t arrived = store->add(counter, 1);
    auto pause = std::chrono::milliseconds(2);
    while ((arrived = store->add(counter, 0)) < info.world_size) {
      if (info.rank != 0 && store->check({missing_key})) {
        const auto text = store->get(missing_key);
        missing_text.assign(text.begin(), text.end());
        break;
      }
      if (Clock::now() >= deadline) {
        std::vector<int64_t> missing;
        for (int64_t r = 0; r < info.world_size; ++r) {
          if (!store->check({arrived_key(r)})) missing.push_back(r);
        }
        missing_text = detail::ranks_text(missing);
        if (info.rank == 0) {
          store->set(missing_key, std::vector<uint8_t>(missing_text.begin(), missing_text.end()));
          const auto linger = Clock::now() + std::chrono::seconds(2);
          while (store->add(told_key, 0) < arrived - 1 && Clock::now() < linger) {
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
          }
        }
        break;
      }
      std::this_thread::sleep_for(pause);
      pause = std::min(pause * 2, std::chrono::milliseconds(50));
    }
    if (!missing_text.empty() && info.rank != 0) store->add(told_key, 1);
  } catch (const std::exception& e) {
    TORCH_CHECK(false, me, ": the store server (rank 0) went away while waiting for the other ",
                "ranks: ", e.what());
  }
  TORCH_CHECK(missing_text.empty(), me, " timed out after ", seconds_text(timeout),
              " (HMOE_TIMEOUT_S): ", missing_text, " of ", info.world_size, " never arrived");
  return store;
}

}  // namespace hybridmoe::dist
