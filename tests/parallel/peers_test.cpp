// peers_test.cpp — the host address each rank publishes, the bounded TCP probe, and the peer
// diagnosis of a failed operation (src/parallel/runtime/peers.h) without a network: loopback
// addresses answer (a closed port refuses); 255.255.255.255 never does (TCP to the broadcast
// address is refused by the kernel: Network is unreachable).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <gtest/gtest.h>
#include <torch/csrc/distributed/c10d/HashStore.hpp>

#include "parallel/runtime/peers.h"

namespace hybridmoe {
namespace {

using Clock = std::chrono::steady_clock;

/// A TCP socket listening on 127.0.0.1 (closed with the object) and its port.
struct Listener {
  int fd = -1;
  int64_t port = 0;
  Listener() {
    fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(a);
    EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    EXPECT_EQ(::listen(fd, 4), 0);
    EXPECT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len), 0);
    port = ntohs(a.sin_port);
  }
  ~Listener() { ::close(fd); }
};

TEST(Peers, HostAddress) {
  dist::EnvInfo info;
  EXPECT_EQ(dist::detail::host_address(dist::GlooDevice::loopback(), info), "127.0.0.1");
  EXPECT_EQ(dist::detail::host_address(dist::GlooDevice::interface("lo"), info), "127.0.0.1");
  EXPECT_EQ(dist::detail::host_address(dist::GlooDevice::address("10.1.2.3"), info), "10.1.2.3");
  EXPECT_EQ(dist::detail::ranks_text({2}), "rank 2");
  EXPECT_EQ(dist::detail::ranks_text({2, 3}), "ranks 2,3");
}

TEST(Peers, TryConnect) {
  const auto soon = Clock::now() + std::chrono::seconds(5);
  int64_t closed_port = 0;
  {
    Listener l;
    EXPECT_EQ(dist::detail::try_connect("127.0.0.1", l.port, soon), "");
    closed_port = l.port;
  }
  EXPECT_EQ(dist::detail::try_connect("127.0.0.1", closed_port, soon), std::strerror(ECONNREFUSED));
  EXPECT_NE(
      dist::detail::try_connect("no-such-host.invalid", 1, soon).find("cannot resolve the address"),
      std::string::npos);
}

TEST(Peers, Diagnosis) {
  Listener master;  // the probe port: refused elsewhere, accepted here
  dist::EnvInfo info;
  info.rank = 0;
  info.world_size = 4;
  info.master_port = master.port;
  c10d::HashStore store;
  auto put = [&](int64_t r, const std::string& host) {
    store.set("hmoe/rank/" + std::to_string(r) + "/host",
              std::vector<uint8_t>(host.begin(), host.end()));
  };
  put(1, "127.0.0.1");        // this host
  put(2, "127.0.0.2");        // another host that answers (a refused connection)
  put(3, "255.255.255.255");  // a host that does not answer
  dist::detail::publish_hosts(store, info, dist::GlooDevice::loopback());
  dist::Group g;
  g.name = "ep";
  g.rank = 0;
  // 1. Every member on this host, but another host of the world does not answer.
  g.ranks = {0, 1};
  EXPECT_NE(dist::detail::peer_diagnosis(g, "").find(
                ", unreachable host outside this group (a member may wait on it): world "
                "rank 3 at 255.255.255.255 ("),
            std::string::npos);
  // 2. A member on the host that does not answer.
  g.ranks = {0, 3};
  const auto start = Clock::now();
  EXPECT_EQ(dist::detail::peer_diagnosis(g, "").rfind(
                ", unreachable peer: world rank 3 at 255.255.255.255 (", 0),
            0u);
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(4));  // one probe budget (2 s)
  // 3. Only answering hosts: the ranks at the address that the error names.
  dist::detail::publish_hosts(
      store,
      [&] {
        dist::EnvInfo two = info;
        two.world_size = 3;
        return two;
      }(),
      dist::GlooDevice::loopback());
  g.ranks = {0, 2};
  EXPECT_EQ(
      dist::detail::peer_diagnosis(g, "Read error [127.0.0.2]:4321: Connection reset by peer"),
      ", peer 127.0.0.2 is world rank 2 (its host answers: the rank ended or closed the "
      "connection)");
  EXPECT_EQ(dist::detail::peer_diagnosis(g, "timed out"), "");
  // 4. Hosts unknown for a member: nothing to say.
  g.ranks = {0, 5};
  EXPECT_EQ(dist::detail::peer_diagnosis(g, "x"), "");
  // The process's table back to one rank on this host.
  dist::EnvInfo one;
  dist::detail::publish_hosts(store, one, dist::GlooDevice::loopback());
}

}  // namespace
}  // namespace hybridmoe
