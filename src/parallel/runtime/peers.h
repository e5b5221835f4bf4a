// peers.h — where the ranks of a world live on the network (internal to src/parallel): each rank
// publishes its host address at start-up (dist::init), and a failed operation asks which of its
// group's peer hosts still answer, so that its error names the unreachable peer.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "hybridmoe/dist.h"

namespace hybridmoe::dist::detail {

/// "rank 2" or "ranks 2,3".
std::string ranks_text(const std::vector<int64_t>& ranks);

/// This host's address on the route to host:port (a UDP socket's connect() picks the route and
/// sends nothing); "" if host does not resolve or no route leads there.
std::string local_address_towards(const std::string& host, int64_t port);

/// One TCP connection attempt to host:port, bounded by `deadline`: "" when it was accepted, else
/// why not ("Connection refused", "Connection timed out", a resolver error, ...).
std::string try_connect(const std::string& host, int64_t port,
                        std::chrono::steady_clock::time_point deadline);

/// The address that peers reach this rank at: the first IPv4 address of the Gloo device's
/// interface, its address, or the address on the route to the master.
std::string host_address(const GlooDevice& device, const EnvInfo& info);

/// Publishes this rank's host address in the rendezvous store and reads every rank's (after
/// rendezvous: all ranks are there); remembered for peer_diagnosis(). Collective over the world.
void publish_hosts(c10d::Store& store, const EnvInfo& info, const GlooDevice& device);

/// Why an operation on `group` may have failed, as far as the network tells. Every other host of
/// the world is asked for a TCP connection at once (about 2 s at most); a refusal is an answer.
/// Returns ", unreachable peer: world ranks 2,3 at 10.0.0.2 (Connection timed out)" for members
/// of the group on hosts that do not answer; else ", unreachable host outside this group (a
/// member may wait on it): ..." (a group inside this node whose member waits on another node);
/// else, when every host answers, which world ranks live at an address that `error` mentions
/// (", peer 10.0.0.2 is world ranks 2,3 (its host answers: the rank ended or closed the
/// connection)"); else "". Also "" when the world's
/// hosts are unknown (no publish_hosts) or every rank is on this host. The comm core's error
/// texts (work.cpp) put it after the elapsed time.
std::string peer_diagnosis(const Group& group, const std::string& error);

}  // namespace hybridmoe::dist::detail
