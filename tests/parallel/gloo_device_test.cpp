// gloo_device_test.cpp — the network device of Gloo process groups comes from the caller's world
// (issue 16): loopback for runs on one host, the interface GLOO_SOCKET_IFNAME or the caller names,
// else the address through which this host reaches MASTER_ADDR. Groups that
// ParallelGroups::build makes from a caller's store and world group bind to the world's device;
// they used to bind to 127.0.0.1 through a file-level flag that only dist::init set, so groups
// of a world built from an external store on several hosts could not connect.
#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>

#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <torch/csrc/distributed/c10d/HashStore.hpp>

#include "hybridmoe/collectives.h"
#include "hybridmoe/dist.h"
#include "hybridmoe/parallel.h"

#if HMOE_HAVE_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif

namespace hybridmoe {
namespace {

/// The first IPv4 address of an interface that is up and not loopback, with the interface's
/// name; empty strings on a machine without one.
struct Nic {
  std::string ifname, address;
};
Nic first_non_loopback_nic() {
  ifaddrs* all = nullptr;
  Nic nic;
  if (::getifaddrs(&all) != 0) return nic;
  for (ifaddrs* a = all; a != nullptr; a = a->ifa_next) {
    if (a->ifa_addr == nullptr || a->ifa_addr->sa_family != AF_INET) continue;
    if ((a->ifa_flags & IFF_UP) == 0 || (a->ifa_flags & IFF_LOOPBACK) != 0) continue;
    char text[INET_ADDRSTRLEN] = {0};
    const auto* in = reinterpret_cast<const sockaddr_in*>(a->ifa_addr);
    if (::inet_ntop(AF_INET, &in->sin_addr, text, sizeof(text)) == nullptr) continue;
    nic = {a->ifa_name, text};
    break;
  }
  ::freeifaddrs(all);
  return nic;
}

dist::EnvInfo two_ranks(int64_t rank, const std::string& master_addr) {
  dist::EnvInfo info;
  info.source = dist::LaunchEnv::kTorchrun;
  info.rank = rank;
  info.world_size = 2;
  info.local_rank = rank;
  info.local_world_size = 2;
  info.master_addr = master_addr;
  return info;
}

TEST(GlooDeviceFor, RunsOnOneHostStayOnLoopback) {
  EXPECT_EQ(dist::gloo_device_for(two_ranks(0, "127.0.0.1"), {}), dist::GlooDevice::loopback());
  EXPECT_EQ(dist::gloo_device_for(two_ranks(1, "localhost"), {}), dist::GlooDevice::loopback());
  EXPECT_EQ(dist::gloo_device_for(two_ranks(1, "127.0.1.1"), {}), dist::GlooDevice::loopback());
  dist::EnvInfo one;
  one.master_addr = "10.11.12.13";
  EXPECT_EQ(dist::gloo_device_for(one, {}), dist::GlooDevice::loopback());
  EXPECT_EQ(dist::GlooDevice::loopback().to_string(), "loopback");
}

TEST(GlooDeviceFor, SocketIfnameNamesTheInterface) {
  const dist::EnvMap env = {{"GLOO_SOCKET_IFNAME", "eth7,eth8"}};
  EXPECT_EQ(dist::gloo_device_for(two_ranks(0, "127.0.0.1"), env),
            dist::GlooDevice::interface("eth7"));
  EXPECT_EQ(dist::gloo_device_for(two_ranks(0, "10.11.12.13"), env).to_string(), "interface eth7");
  EXPECT_THROW(
      dist::gloo_device_for(two_ranks(0, "10.11.12.13"), {{"GLOO_SOCKET_IFNAME", ",eth8"}}),
      c10::Error);
  EXPECT_THROW(dist::GlooDevice::interface(""), c10::Error);
}

TEST(GlooDeviceFor, RemoteMasterUsesTheAddressThatReachesIt) {
  const Nic nic = first_non_loopback_nic();
  if (nic.address.empty()) GTEST_SKIP() << "this machine has no non-loopback IPv4 interface";
  // The master is this host's own non-loopback address: the route to it leaves from there.
  const dist::GlooDevice d = dist::gloo_device_for(two_ranks(1, nic.address), {});
  EXPECT_EQ(d, dist::GlooDevice::address(nic.address)) << d.to_string();
  EXPECT_EQ(d.to_string(), "address " + nic.address);
}

#if HMOE_HAVE_GLOO
/// The description of the Gloo device a member's process group binds to, e.g.
/// "[tcp, ..., addr=[192.0.2.2]:0]".
std::string gloo_device_text(const dist::Group& g) {
  TORCH_CHECK(g.is_member() && g.pg, "group ", g.name, " has no process group here");
#if HMOE_TORCH_AT_LEAST(2, 0)
  auto backend = g.pg->getBackend(c10::DeviceType::CPU);
  auto* gloo = dynamic_cast<c10d::ProcessGroupGloo*>(backend.get());
#else
  auto* gloo = dynamic_cast<c10d::ProcessGroupGloo*>(g.pg.get());
#endif
  TORCH_CHECK(gloo != nullptr, "group ", g.name, " has no Gloo process group");
  return gloo->getOptions()->devices.at(0)->str();
}

/// Two threads as the ranks of a World over a shared in-process store (a caller's store: no
/// dist::init), then the dp group of ParallelGroups::build from that world group and store.
/// Returns each rank's description of the world group's and the dp group's Gloo device.
struct RankDevices {
  std::string world_device, world_text, dp_text, error;
  double sum = 0;
};
std::vector<RankDevices> run_two_ranks(const std::string& master_addr,
                                       c10::optional<dist::GlooDevice> device) {
  dist::StorePtr store = c10::make_intrusive<c10d::HashStore>();
  std::vector<RankDevices> out(2);
  std::vector<std::thread> ranks;
  for (int64_t r = 0; r < 2; ++r) {
    ranks.emplace_back([&, r] {
      try {
        dist::World world(two_ranks(r, master_addr), store, std::chrono::seconds(30), false,
                          device);
        auto groups = ParallelGroups::build(ParallelConfig{1, 2, 1, 1, 1}, world.group(),
                                            world.store(), false, "external");
        out[r].world_device = world.gloo_device().to_string();
        out[r].world_text = gloo_device_text(world.group());
        out[r].dp_text = gloo_device_text(groups.dp);
        out[r].sum =
            dist::all_reduce_sum(torch::ones({1}, torch::kFloat64), groups.dp).item<double>();
      } catch (const std::exception& e) {
        out[r].error = e.what();
      }
    });
  }
  for (auto& t : ranks) t.join();
  return out;
}

TEST(GlooDevice, ExternalStoreGroupsBindToTheWorldsAddress) {
  const Nic nic = first_non_loopback_nic();
  if (nic.address.empty()) GTEST_SKIP() << "this machine has no non-loopback IPv4 interface";
  // A world of two whose master is this host's non-loopback address, as on a cluster: its groups
  // (the world group and the dp group built from the caller's store) bind to that address.
  for (const auto& rank : run_two_ranks(nic.address, c10::nullopt)) {
    ASSERT_EQ(rank.error, "");
    EXPECT_EQ(rank.world_device, "address " + nic.address);
    EXPECT_NE(rank.world_text.find(nic.address), std::string::npos) << rank.world_text;
    EXPECT_NE(rank.dp_text.find(nic.address), std::string::npos) << rank.dp_text;
    EXPECT_EQ(rank.dp_text.find("127.0.0.1"), std::string::npos) << rank.dp_text;
    EXPECT_EQ(rank.sum, 2.0);
  }
}

TEST(GlooDevice, ExternalStoreGroupsBindToTheInterfaceTheCallerNames) {
  const Nic nic = first_non_loopback_nic();
  if (nic.address.empty()) GTEST_SKIP() << "this machine has no non-loopback IPv4 interface";
  // A loopback master address, but the caller names the interface: the choice is the caller's.
  for (const auto& rank : run_two_ranks("127.0.0.1", dist::GlooDevice::interface(nic.ifname))) {
    ASSERT_EQ(rank.error, "");
    EXPECT_EQ(rank.world_device, "interface " + nic.ifname);
    EXPECT_NE(rank.dp_text.find(nic.address), std::string::npos) << rank.dp_text;
    EXPECT_EQ(rank.sum, 2.0);
  }
}

TEST(GlooDevice, LocalWorldsStayOnLoopback) {
  for (const auto& rank : run_two_ranks("127.0.0.1", c10::nullopt)) {
    ASSERT_EQ(rank.error, "");
    EXPECT_EQ(rank.world_device, "loopback");
    EXPECT_NE(rank.dp_text.find("127.0.0.1"), std::string::npos) << rank.dp_text;
    EXPECT_EQ(rank.sum, 2.0);
  }
}
#endif

}  // namespace
}  // namespace hybridmoe
