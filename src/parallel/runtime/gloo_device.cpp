// gloo_device.cpp — which network device a world's Gloo process groups bind to: the interface the
// caller names, loopback for a run on one host, or the address through which this host reaches
// the rendezvous master (see GlooDevice in dist.h).
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

#include "hybridmoe/dist.h"

namespace hybridmoe::dist {
namespace {

bool is_loopback_text(const std::string& addr) {
  return addr == "localhost" || addr.rfind("127.", 0) == 0 || addr == "::1";
}

/// This host's address on the route to `host`:`port` (a UDP socket's connect() picks the route
/// and sends nothing), or "" if `host` does not resolve or no route leads there.
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
    char text[INET6_ADDRSTRLEN] = {0};
    if (::connect(fd, a->ai_addr, a->ai_addrlen) == 0 &&
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) == 0) {
      const void* raw =
          local.ss_family == AF_INET
              ? static_cast<const void*>(&reinterpret_cast<sockaddr_in*>(&local)->sin_addr)
              : static_cast<const void*>(&reinterpret_cast<sockaddr_in6*>(&local)->sin6_addr);
      if (::inet_ntop(local.ss_family, raw, text, sizeof(text)) != nullptr) out = text;
    }
    ::close(fd);
  }
  ::freeaddrinfo(found);
  return out;
}

}  // namespace

GlooDevice GlooDevice::interface(std::string ifname) {
  TORCH_CHECK(!ifname.empty(), "GlooDevice::interface: an interface name is required");
  return GlooDevice{Kind::kInterface, std::move(ifname)};
}

GlooDevice GlooDevice::address(std::string host) {
  TORCH_CHECK(!host.empty(), "GlooDevice::address: an address or host name is required");
  return GlooDevice{Kind::kAddress, std::move(host)};
}

std::string GlooDevice::to_string() const {
  switch (kind) {
    case Kind::kLoopback:
      return "loopback";
    case Kind::kInterface:
      return "interface " + name;
    case Kind::kAddress:
      return "address " + name;
    case Kind::kHostDefault:
      return "host default";
  }
  return "unknown";
}

GlooDevice gloo_device_for(const EnvInfo& info, const EnvMap& env) {
  // 1. The interface named by GLOO_SOCKET_IFNAME (its first, as c10d takes one
  // per device).
  if (auto it = env.find("GLOO_SOCKET_IFNAME"); it != env.end() && !it->second.empty()) {
    const std::string first = it->second.substr(0, it->second.find(','));
    TORCH_CHECK(!first.empty(), "GLOO_SOCKET_IFNAME should start with an interface name, got '",
                it->second, "'");
    return GlooDevice::interface(first);
  }
  // 2. Every rank on this host.
  if (info.world_size == 1 || is_loopback_text(info.master_addr)) return GlooDevice::loopback();
  // 3. The address the master can reach back; a master name that resolves to
  // loopback is local.
  const std::string local = local_address_towards(info.master_addr, info.master_port);
  if (local.empty()) return GlooDevice::host_default();
  if (is_loopback_text(local)) return GlooDevice::loopback();
  return GlooDevice::address(local);
}

}  // namespace hybridmoe::dist
