// comm_stats.h — counters of the collectives this process ran: calls, bytes sent and seconds
// spent waiting, per operation name. Benchmarks read them to show each layout's communication.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <string>

namespace hybridmoe::dist {

/// Totals of one operation (e.g. "all_to_all", "all_gather_rows").
struct OpStats {
  int64_t calls = 0;
  int64_t bytes_sent = 0;  ///< bytes this rank sent (its own rows excluded)
  double seconds = 0.0;    ///< wall time from issuing to completion
};

/// Whether `op` belongs to the token exchange: an all-to-all (its name holds "all_to_all") or the
/// exchange of row counts before one ("exchange_counts").
bool is_token_exchange(const std::string& op);

/// The sum of the totals in `stats` of the operations `select` accepts (every one when null).
///
/// Example:
///   const OpStats a2a = total_of(comm_stats(), is_token_exchange);
OpStats total_of(const std::map<std::string, OpStats>& stats,
                 bool (*select)(const std::string& op) = nullptr);

/// Adds one call to the totals of `op`. Thread-safe.
void record_comm(const std::string& op, int64_t bytes_sent, double seconds);
/// A copy of every operation's totals since the last reset.
std::map<std::string, OpStats> comm_stats();
void reset_comm_stats();

/// Records the enclosing scope's duration as one call of `op`.
///
/// Example:
///   { CommTimer t("all_to_all", bytes); work->wait(); }
class CommTimer {
 public:
  CommTimer(const char* op, int64_t bytes_sent)
      : op_(op), bytes_(bytes_sent), start_(std::chrono::steady_clock::now()) {}
  ~CommTimer() {
    record_comm(op_, bytes_,
                std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count());
  }
  CommTimer(const CommTimer&) = delete;
  CommTimer& operator=(const CommTimer&) = delete;

 private:
  const char* op_;
  int64_t bytes_;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace hybridmoe::dist
