// peers.cpp — see peers.h: the host address of every rank of the world (published at start-up)
// and the diagnosis of a failed operation's peers (which hosts still answer a TCP connection).
#include "parallel/runtime/peers.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <future>
#include <map>
#include <mutex>
#include <set>
#include <sstream>

namespace hybridmoe::dist::detail {
namespace {

using Clock = std::chrono::steady_clock;

/// How long peer_diagnosis waits for the peers' hosts to answer (all at once).
constexpr std::chrono::milliseconds kProbeBudget{2000};

/// The world's hosts as publish_hosts() read them (one world per process; ranks run as threads
/// in some tests, hence the lock).
struct KnownHosts {
  std::mutex mutex;
  std::vector<std::string> hosts;  ///< index: world rank
  int64_t probe_port = 0;          ///< the rendezvous port: open on the master, closed elsewhere
};

KnownHosts& known() {
  static KnownHosts k;
  return k;
}

std::string address_text(const sockaddr* a) {
  char text[INET6_ADDRSTRLEN] = {0};
  const void* raw =
      a->sa_family == AF_INET
          ? static_cast<const void*>(&reinterpret_cast<const sockaddr_in*>(a)->sin_addr)
          : static_cast<const void*>(&reinterpret_cast<const sockaddr_in6*>(a)->sin6_addr);
  return ::inet_ntop(a->sa_family, raw, text, sizeof(text)) != nullptr ? text : "";
}

/// The first IPv4 address of interface `name` (else its first IPv6 address); "" if none.
std::string interface_address(const std::string& name) {
  ifaddrs* list = nullptr;
  if (::getifaddrs(&list) != 0) return "";
  std::string v4, v6;
  for (ifaddrs* i = list; i != nullptr; i = i->ifa_next) {
    if (i->ifa_addr == nullptr || name != i->ifa_name) continue;
    if (i->ifa_addr->sa_family == AF_INET && v4.empty()) v4 = address_text(i->ifa_addr);
    if (i->ifa_addr->sa_family == AF_INET6 && v6.empty()) v6 = address_text(i->ifa_addr);
  }
  ::freeifaddrs(list);
  return v4.empty() ? v6 : v4;
}

}  // namespace

std::string ranks_text(const std::vector<int64_t>& ranks) {
  std::ostringstream s;
  s << (ranks.size() == 1 ? "rank " : "ranks ");
  for (size_t i = 0; i < ranks.size(); ++i) s << (i ? "," : "") << ranks[i];
  return s.str();
}

std::string local_address_towards(const std::string& host, int64_t port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* found = nullptr;
  if (::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found) != 0) return "";
  std::string out;
  for (addrinfo* a = found; a != nullptr && out.empty(); a = a->ai_next) {
    const int fd = ::socket(a->ai_family, a->ai_socktype, a->ai_protocol);
    if (fd < 0) continue;
    sockaddr_storage local{};
    socklen_t len = sizeof(local);
    if (::connect(fd, a->ai_addr, a->ai_addrlen) == 0 &&
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) == 0) {
      out = address_text(reinterpret_cast<const sockaddr*>(&local));
    }
    ::close(fd);
  }
  ::freeaddrinfo(found);
  return out;
}

std::string try_connect(const std::string& host, int64_t port, Clock::time_point deadline) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  const int gai = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found);
  if (gai != 0) return std::string("cannot resolve the address: ") + ::gai_strerror(gai);
  std::string why = "no address";
  for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
    const int fd =
        ::socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      why = std::strerror(errno);
      continue;
    }
    int err = ::connect(fd, a->ai_addr, a->ai_addrlen) == 0 ? 0 : errno;
    if (err == EINPROGRESS) {
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      pollfd p{fd, POLLOUT, 0};
      const int ready = ::poll(&p, 1, static_cast<int>(std::max<int64_t>(left.count(), 1)));
      socklen_t len = sizeof(err);
      if (ready <= 0) {
        err = ETIMEDOUT;
      } else if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) {
        err = errno;
      }
    }
    ::close(fd);
    if (err == 0) {
      ::freeaddrinfo(found);
      return "";
    }
    why = std::strerror(err);
  }
  ::freeaddrinfo(found);
  return why;
}

std::string host_address(const GlooDevice& device, const EnvInfo& info) {
  switch (device.kind) {
    case GlooDevice::Kind::kLoopback:
      return "127.0.0.1";
    case GlooDevice::Kind::kInterface: {
      const std::string a = interface_address(device.name);
      if (!a.empty()) return a;
      break;
    }
    case GlooDevice::Kind::kAddress:
      return device.name;
    case GlooDevice::Kind::kHostDefault:
      break;
  }
  return local_address_towards(info.master_addr, info.master_port);
}

void publish_hosts(c10d::Store& store, const EnvInfo& info, const GlooDevice& device) {
  const std::string mine = host_address(device, info);
  auto key = [](int64_t r) { return "hmoe/rank/" + std::to_string(r) + "/host"; };
  store.set(key(info.rank), std::vector<uint8_t>(mine.begin(), mine.end()));
  std::vector<std::string> hosts(info.world_size);
  for (int64_t r = 0; r < info.world_size; ++r) {
    const auto v = store.get(key(r));
    hosts[r].assign(v.begin(), v.end());
  }
  KnownHosts& k = known();
  std::lock_guard<std::mutex> lock(k.mutex);
  k.hosts = std::move(hosts);
  k.probe_port = info.master_port;
}

std::string peer_diagnosis(const Group& group, const std::string& error) {
  std::vector<std::string> hosts;
  int64_t port = 0;
  {
    KnownHosts& k = known();
    std::lock_guard<std::mutex> lock(k.mutex);
    hosts = k.hosts;
    port = k.probe_port;
  }
  if (!group.is_member()) return "";
  const int64_t world = static_cast<int64_t>(hosts.size());
  for (int64_t r : group.ranks) {
    if (r < 0 || r >= world || hosts[r].empty()) return "";
  }
  // 1. The other hosts of the world, and which of them hold members of this group. A group
  //    inside this host may wait on a member that waits on another host, so every host is asked.
  const std::string& me = hosts[group.ranks[group.rank]];
  std::map<std::string, std::vector<int64_t>> remote;  // host -> the world ranks living there
  for (int64_t r = 0; r < world; ++r) {
    if (hosts[r] != me && !hosts[r].empty()) remote[hosts[r]].push_back(r);
  }
  if (remote.empty()) return "";
  std::set<std::string> member_hosts;
  for (int64_t r : group.ranks) member_hosts.insert(hosts[r]);
  // 2. One connection attempt per host, all at once, within one budget. A refused connection
  //    is an answer: the host is there (only the master listens on the port).
  const auto deadline = Clock::now() + kProbeBudget;
  std::map<std::string, std::future<std::string>> probes;
  for (const auto& entry : remote) {
    const std::string host = entry.first;
    probes[host] = std::async(std::launch::async,
                              [host, port, deadline] { return try_connect(host, port, deadline); });
  }
  // 3. The text: unreachable members first, then unreachable hosts outside the group, else the
  //    ranks at an address that the error names.
  std::ostringstream members, others, named;
  auto add = [](std::ostringstream& s, const std::string& item) {
    s << (s.tellp() > 0 ? "; " : "") << item;
  };
  for (auto& [host, probe] : probes) {
    const std::string why = probe.get();
    const std::vector<int64_t>& ranks = remote[host];
    if (!why.empty() && why != std::strerror(ECONNREFUSED)) {
      add(member_hosts.count(host) ? members : others,
          "world " + ranks_text(ranks) + " at " + host + " (" + why + ")");
    } else if (member_hosts.count(host) && error.find(host) != std::string::npos) {
      add(named, "peer " + host + " is world " + ranks_text(ranks));
    }
  }
  if (members.tellp() > 0) return ", unreachable peer: " + members.str();
  if (others.tellp() > 0) {
    return ", unreachable host outside this group (a member may wait on it): " + others.str();
  }
  if (named.tellp() > 0) {
    return ", " + named.str() + " (its host answers: the rank ended or closed the connection)";
  }
  return "";
}

}  // namespace hybridmoe::dist::detail
