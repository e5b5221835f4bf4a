// gloo_device.cpp — which network device a world's Gloo process groups bind to: the interface the
// caller names, loopback for a run on one host, or the address through which this host reaches
// the rendezvous master (see GlooDevice in dist.h).
#include "hybridmoe/dist.h"
#include "parallel/runtime/peers.h"

namespace hybridmoe::dist {
namespace {

bool is_loopback_text(const std::string& addr) {
  return addr == "localhost" || addr.rfind("127.", 0) == 0 || addr == "::1";
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
  const std::string local = detail::local_address_towards(info.master_addr, info.master_port);
  if (local.empty()) return GlooDevice::host_default();
  if (is_loopback_text(local)) return GlooDevice::loopback();
  return GlooDevice::address(local);
}

}  // namespace hybridmoe::dist
