// launcher.cpp — the built-in launcher (`hmoe launch`, multi-rank tests): starts this node's N
// ranks of a command with torchrun's variables (one node, or node R of several), relays their
// output line by line with a rank prefix, ends the others when one fails, and reports how each
// ended: one summary line per failed rank (exit code or signal, last error line, root cause or
// consequence).
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <optional>
#include <sstream>
#include <string>
#include <thread>

#include "hybridmoe/dist.h"
#include "parallel/runtime/launch_order.h"

extern char** environ;

namespace hybridmoe::dist {
namespace {

using Clock = std::chrono::steady_clock;

/// One started rank: its pid, its two output pipes and what is left of an unfinished line.
struct Rank {
  pid_t pid = -1;
  int fds[2] = {-1, -1};  // stdout, stderr (read ends)
  std::string partial[2];
  bool running = false;
  int code = 0;
  int signal = 0;                      // the signal that ended it, 0 if it exited
  bool signalled = false;              // the launcher sent it SIGTERM / SIGKILL while it ran
  std::string last_error;              // its last non-empty stderr line
  std::optional<double> last_error_s;  // when that line came, seconds since the launch
};

/// The longest last error line a summary quotes.
constexpr size_t kMaxErrorLine = 400;

int exit_code_of(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

void default_line_sink(int64_t rank, bool is_stderr, const std::string& line,
                       const LaunchOptions& o) {
  FILE* out = is_stderr ? stderr : stdout;
  const bool plain =
      rank >= 0 && (!o.prefix_output || (o.plain_lead_stdout && rank == 0 && !is_stderr));
  const std::string tag = rank < 0 ? "[launch] " : "[rank " + std::to_string(rank) + "] ";
  std::string text = plain ? line + "\n" : tag + line + "\n";
  std::fwrite(text.data(), 1, text.size(), out);
  std::fflush(out);
}

/// The environment of one rank as "KEY=VALUE" strings.
std::vector<std::string> rank_environment(const LaunchOptions& o, int64_t local_rank,
                                          int64_t port) {
  EnvMap env = process_env();
  env["RANK"] = std::to_string(o.node_rank * o.nproc + local_rank);
  env["WORLD_SIZE"] = std::to_string(o.nnodes * o.nproc);
  env["LOCAL_RANK"] = std::to_string(local_rank);
  env["LOCAL_WORLD_SIZE"] = std::to_string(o.nproc);
  env["GROUP_RANK"] = std::to_string(o.node_rank);
  env["NODE_RANK"] = std::to_string(o.node_rank);
  env["MASTER_ADDR"] = o.master_addr;
  env["MASTER_PORT"] = std::to_string(port);
  for (const char* key : {"OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"}) {
    if (env.find(key) == env.end() || env[key].empty()) env[key] = "1";
  }
  if (o.timeout_s > 0) env["HMOE_TIMEOUT_S"] = std::to_string(o.timeout_s);
  for (const auto& [k, v] : o.extra_env) env[k] = v;
  std::vector<std::string> out;
  for (const auto& [k, v] : env) out.push_back(k + "=" + v);
  return out;
}

std::vector<char*> c_strings(std::vector<std::string>& strings) {
  std::vector<char*> out;
  for (auto& s : strings) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

}  // namespace

std::string signal_name(int signal) {
  static const std::pair<int, const char*> kNames[] = {
      {SIGHUP, "SIGHUP"},   {SIGINT, "SIGINT"},   {SIGQUIT, "SIGQUIT"}, {SIGILL, "SIGILL"},
      {SIGTRAP, "SIGTRAP"}, {SIGABRT, "SIGABRT"}, {SIGBUS, "SIGBUS"},   {SIGFPE, "SIGFPE"},
      {SIGKILL, "SIGKILL"}, {SIGUSR1, "SIGUSR1"}, {SIGSEGV, "SIGSEGV"}, {SIGUSR2, "SIGUSR2"},
      {SIGPIPE, "SIGPIPE"}, {SIGALRM, "SIGALRM"}, {SIGTERM, "SIGTERM"}, {SIGXCPU, "SIGXCPU"},
      {SIGXFSZ, "SIGXFSZ"}, {SIGSYS, "SIGSYS"}};
  for (const auto& [number, name] : kNames) {
    if (number == signal) return name;
  }
  return "signal " + std::to_string(signal);
}

std::string describe_failure(const RankFailure& f, int64_t root_rank, double max_time_s) {
  std::ostringstream s;
  s << "rank " << f.rank << " failed (";
  if (f.root_cause) {
    s << "root cause";
  } else if (root_rank < 0) {
    s << "ended by the launcher at the wall-clock limit of " << max_time_s << " s";
  } else if (f.ended_by_launcher) {
    s << "consequence: ended by the launcher after rank " << root_rank << " failed";
  } else {
    s << "consequence: failed after rank " << root_rank;
  }
  s << "): ";
  if (f.signal != 0) {
    s << signal_name(f.signal) << " (exit code " << f.code << ")";
  } else {
    s << "exit code " << f.code;
  }
  s << "; last error line: " << (f.last_error.empty() ? "(none)" : f.last_error);
  return s.str();
}

int64_t find_free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  TORCH_CHECK(fd >= 0, "find_free_port: socket() failed: ", std::strerror(errno));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0;
  const int err = errno;
  ::close(fd);
  TORCH_CHECK(ok, "find_free_port: could not bind a port on 127.0.0.1: ", std::strerror(err));
  return ntohs(addr.sin_port);
}

LaunchResult launch_local(const LaunchOptions& o) {
  TORCH_CHECK(o.nproc >= 1, "launch_local: nproc should be >= 1, got ", o.nproc);
  TORCH_CHECK(o.nnodes >= 1, "launch_local: nnodes should be >= 1, got ", o.nnodes);
  TORCH_CHECK(o.node_rank >= 0 && o.node_rank < o.nnodes,
              "launch_local: node rank should be in [0, ", o.nnodes, "), got ", o.node_rank);
  TORCH_CHECK(!o.master_addr.empty(), "launch_local: a master address is required");
  TORCH_CHECK(!o.command.empty(), "launch_local: a command to run is required");
  // A free port is only known on this host: several nodes must agree on one beforehand.
  const int64_t port = o.master_port > 0 ? o.master_port
                       : o.nnodes > 1    ? kDefaultMasterPort
                                         : find_free_port();
  const int64_t first_rank = o.node_rank * o.nproc;  // world rank of local rank 0
  auto sink = [&](int64_t local, bool is_stderr, const std::string& line) {
    const int64_t rank = local < 0 ? local : first_rank + local;
    if (o.on_line) {
      o.on_line(rank, is_stderr, line);
    } else {
      default_line_sink(rank, is_stderr, line, o);
    }
  };

  // 1. Everything the children need is built before the first fork.
  std::vector<std::string> argv_strings = o.command;
  std::vector<char*> argv = c_strings(argv_strings);
  std::vector<std::vector<std::string>> env_strings(o.nproc);
  std::vector<std::vector<char*>> envs(o.nproc);
  for (int64_t r = 0; r < o.nproc; ++r) {
    env_strings[r] = rank_environment(o, r, port);
    envs[r] = c_strings(env_strings[r]);
  }
  const pid_t parent = ::getpid();
  std::fflush(stdout);
  std::fflush(stderr);

  // 2. Start the ranks, each with its stdout and stderr on pipes.
  std::vector<Rank> ranks(o.nproc);
  for (int64_t r = 0; r < o.nproc; ++r) {
    int out_pipe[2], err_pipe[2];
    TORCH_CHECK(::pipe2(out_pipe, O_CLOEXEC) == 0 && ::pipe2(err_pipe, O_CLOEXEC) == 0,
                "launch_local: pipe() failed: ", std::strerror(errno));
    const pid_t pid = ::fork();
    TORCH_CHECK(pid >= 0, "launch_local: fork() failed: ", std::strerror(errno));
    if (pid == 0) {
      // Child: only async-signal-safe calls until exec.
      ::dup2(out_pipe[1], STDOUT_FILENO);
      ::dup2(err_pipe[1], STDERR_FILENO);
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);
      if (::getppid() != parent) ::_exit(143);
      ::execvpe(argv[0], argv.data(), envs[r].data());
      const char msg[] = "launch_local: could not execute the command\n";
      ssize_t ignored = ::write(STDERR_FILENO, msg, sizeof(msg) - 1);
      (void)ignored;
      ::_exit(127);
    }
    ::close(out_pipe[1]);
    ::close(err_pipe[1]);
    ranks[r].pid = pid;
    ranks[r].fds[0] = out_pipe[0];
    ranks[r].fds[1] = err_pipe[0];
    ranks[r].running = true;
  }

  // 3. Relay output and watch the ranks until all have ended and their pipes are drained.
  LaunchResult result;
  std::vector<int64_t> end_order;  // ranks in the order they were reaped
  const auto start = Clock::now();
  auto relay = [&](int64_t r, int s, const std::string& line) {
    if (s == 1 && line.find_first_not_of(" \t\r") != std::string::npos) {
      ranks[r].last_error = line.substr(0, kMaxErrorLine);
      ranks[r].last_error_s = std::chrono::duration<double>(Clock::now() - start).count();
    }
    sink(r, s == 1, line);
  };
  c10::optional<Clock::time_point> kill_deadline;  // SIGKILL stragglers after this
  auto end_others = [&] {
    for (auto& rk : ranks) {
      if (rk.running) {
        ::kill(rk.pid, SIGTERM);
        rk.signalled = true;
      }
    }
    if (!kill_deadline) {
      kill_deadline =
          Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(o.grace_s * 1000));
    }
  };
  auto all_ended = [&] {
    for (const auto& rk : ranks) {
      if (rk.running) return false;
    }
    return true;
  };
  c10::optional<Clock::time_point> drain_deadline;
  while (true) {
    // 3a. Read whatever output is ready.
    std::vector<pollfd> pfds;
    std::vector<std::pair<int64_t, int>> owners;
    for (int64_t r = 0; r < o.nproc; ++r) {
      for (int s = 0; s < 2; ++s) {
        if (ranks[r].fds[s] >= 0) {
          pfds.push_back({ranks[r].fds[s], POLLIN, 0});
          owners.emplace_back(r, s);
        }
      }
    }
    if (pfds.empty() && all_ended()) break;
    if (!pfds.empty()) ::poll(pfds.data(), pfds.size(), 50);
    for (size_t i = 0; i < pfds.size(); ++i) {
      if (!(pfds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      auto [r, s] = owners[i];
      char buf[4096];
      const ssize_t n = ::read(pfds[i].fd, buf, sizeof(buf));
      if (n > 0) {
        std::string& part = ranks[r].partial[s];
        part.append(buf, n);
        size_t nl;
        while ((nl = part.find('\n')) != std::string::npos) {
          relay(r, s, part.substr(0, nl));
          part.erase(0, nl + 1);
        }
      } else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
        if (!ranks[r].partial[s].empty()) relay(r, s, ranks[r].partial[s]);
        ranks[r].partial[s].clear();
        ::close(ranks[r].fds[s]);
        ranks[r].fds[s] = -1;
      }
    }
    if (pfds.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    // 3b. Reap ended ranks; the first failure ends the others. Ranks reaped in the same pass
    //     ended within one poll interval: reaped_order says which ended first.
    std::vector<detail::ReapedRank> reaped;
    for (int64_t r = 0; r < o.nproc; ++r) {
      if (!ranks[r].running) continue;
      int status = 0;
      if (::waitpid(ranks[r].pid, &status, WNOHANG) != ranks[r].pid) continue;
      ranks[r].running = false;
      ranks[r].code = exit_code_of(status);
      ranks[r].signal = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
      reaped.push_back({r, ranks[r].signal != 0 && !ranks[r].signalled, ranks[r].last_error_s});
    }
    for (int64_t r : detail::reaped_order(std::move(reaped))) {
      end_order.push_back(r);
      if (ranks[r].code != 0 && result.failed_rank < 0 && !result.timed_out) {
        result.failed_rank = first_rank + r;
        result.exit_code = ranks[r].code;
        if (o.kill_on_failure) end_others();
      }
    }
    // 3c. Wall-clock limit, and SIGKILL after the grace period.
    const auto now = Clock::now();
    if (o.max_time_s > 0 && !result.timed_out &&
        now - start > std::chrono::milliseconds(static_cast<int64_t>(o.max_time_s * 1000))) {
      result.timed_out = true;
      sink(-1, true,
           "launch_local: wall-clock limit of " + std::to_string(o.max_time_s) +
               " s reached; ending every rank");
      end_others();
    }
    if (kill_deadline && now > *kill_deadline) {
      for (auto& rk : ranks) {
        if (rk.running) ::kill(rk.pid, SIGKILL);
      }
    }
    // 3d. Pipes held open by grandchildren must not keep us here once every rank has ended.
    if (all_ended()) {
      if (!drain_deadline) drain_deadline = now + std::chrono::seconds(2);
      if (now > *drain_deadline) {
        for (auto& rk : ranks) {
          for (int s = 0; s < 2; ++s) {
            if (rk.fds[s] >= 0) ::close(rk.fds[s]);
            rk.fds[s] = -1;
          }
        }
      }
    }
  }

  // 4. Report: every rank's code, and one line per failed rank in the order they ended.
  for (const auto& rk : ranks) result.rank_codes.push_back(rk.code);
  if (result.timed_out && result.failed_rank < 0) result.exit_code = 124;
  for (int64_t r : end_order) {
    if (ranks[r].code == 0) continue;
    RankFailure f;
    f.rank = first_rank + r;
    f.code = ranks[r].code;
    f.signal = ranks[r].signal;
    f.root_cause = f.rank == result.failed_rank;
    // Ended by the launcher's signal; a rank that was signalled but had already exited (or
    // exited on its own after handling the signal) failed after the root cause.
    f.ended_by_launcher = ranks[r].signalled && ranks[r].signal != 0;
    f.last_error = ranks[r].last_error;
    result.failures.push_back(f);
  }
  for (const auto& f : result.failures) {
    sink(-1, true, describe_failure(f, result.failed_rank, o.max_time_s));
  }
  return result;
}

namespace detail {

std::vector<int64_t> reaped_order(std::vector<ReapedRank> reaped) {
  std::stable_sort(reaped.begin(), reaped.end(), [](const ReapedRank& a, const ReapedRank& b) {
    if (a.killed != b.killed) return a.killed;
    if (a.last_stderr_s.has_value() != b.last_stderr_s.has_value())
      return a.last_stderr_s.has_value();
    if (a.last_stderr_s && *a.last_stderr_s != *b.last_stderr_s)
      return *a.last_stderr_s < *b.last_stderr_s;
    return a.rank < b.rank;
  });
  std::vector<int64_t> order;
  for (const auto& r : reaped) order.push_back(r.rank);
  return order;
}

}  // namespace detail

}  // namespace hybridmoe::dist
