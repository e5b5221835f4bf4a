// comm_stats.cpp — see comm_stats.h.
#include "hybridmoe/comm_stats.h"

#include <mutex>

namespace hybridmoe::dist {

namespace {
std::mutex& stats_mutex() {
  static std::mutex m;
  return m;
}
std::map<std::string, OpStats>& stats() {
  static std::map<std::string, OpStats> s;
  return s;
}
}  // namespace

void record_comm(const std::string& op, int64_t bytes_sent, double seconds) {
  std::lock_guard<std::mutex> lock(stats_mutex());
  auto& s = stats()[op];
  s.calls += 1;
  s.bytes_sent += bytes_sent;
  s.seconds += seconds;
}

std::map<std::string, OpStats> comm_stats() {
  std::lock_guard<std::mutex> lock(stats_mutex());
  return stats();
}

bool is_token_exchange(const std::string& op) {
  return op.find("all_to_all") != std::string::npos || op == "exchange_counts";
}

OpStats total_of(const std::map<std::string, OpStats>& stats,
                 bool (*select)(const std::string& op)) {
  OpStats total;
  for (const auto& [op, s] : stats) {
    if (select != nullptr && !select(op)) continue;
    total.calls += s.calls;
    total.bytes_sent += s.bytes_sent;
    total.seconds += s.seconds;
  }
  return total;
}

void reset_comm_stats() {
  std::lock_guard<std::mutex> lock(stats_mutex());
  stats().clear();
}

}  // namespace hybridmoe::dist
