// dist.h — process start-up for distributed runs: reading the launcher's environment (torchrun,
// OpenMPI, Slurm), rendezvous over c10d's TCPStore, the world process group (Gloo for CPU tensors,
// NCCL for CUDA tensors when built with CUDA), subgroups from rank lists, the collective timeout,
// and the built-in local launcher behind `hmoe launch`.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "hybridmoe/detail/compat.h"

namespace hybridmoe::dist {

using ProcessGroupPtr = c10::intrusive_ptr<c10d::ProcessGroup>;
using StorePtr = c10::intrusive_ptr<c10d::Store>;
using EnvMap = std::map<std::string, std::string>;

/// Default collective timeout in seconds when neither the option nor HMOE_TIMEOUT_S is set.
inline constexpr double kDefaultTimeoutSeconds = 300.0;
/// Default rendezvous port when MASTER_PORT is not set.
inline constexpr int64_t kDefaultMasterPort = 29500;

// ---- environment ------------------------------------------------------------------------------

/// Which launcher's variables described this process.
enum class LaunchEnv { kSingle, kTorchrun, kOpenMPI, kSlurm };
std::string to_string(LaunchEnv env);

/// Where this process sits among its peers, as its launcher described it.
struct EnvInfo {
  LaunchEnv source = LaunchEnv::kSingle;
  int64_t rank = 0;
  int64_t world_size = 1;
  int64_t local_rank = 0;
  int64_t local_world_size = 1;  ///< ranks on this node
  int64_t node_rank = 0;         ///< this node's index (ranks node_rank * local_world_size + ...)
  std::string master_addr = "127.0.0.1";
  int64_t master_port = kDefaultMasterPort;
};

/// Reads the launcher variables from `env` (a pure function, for tests). Precedence: torchrun
/// (RANK + WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_RANK or NODE_RANK), then OpenMPI
/// (OMPI_COMM_WORLD_RANK/SIZE/LOCAL_RANK/LOCAL_SIZE), then Slurm (SLURM_PROCID, SLURM_NTASKS,
/// SLURM_LOCALID, SLURM_NTASKS_PER_NODE or the first count of SLURM_TASKS_PER_NODE, SLURM_NODEID);
/// none means one process. Without a local world size every rank is on one node; without a node
/// index it is rank / local_world_size. Ranks are taken to fill nodes in order (node i holds ranks
/// i * local_world_size ...), which every supported launcher does by default; a world that is not
/// a whole number of nodes, or a node rank that disagrees with that order, is refused.
/// MASTER_ADDR / MASTER_PORT come from env or default to 127.0.0.1:29500.
///
/// Example:
///   EnvInfo e = parse_env({{"RANK", "1"}, {"WORLD_SIZE", "4"}, {"MASTER_PORT", "1234"}});
///   // e.source == LaunchEnv::kTorchrun, e.rank == 1, e.world_size == 4
EnvInfo parse_env(const EnvMap& env);

/// This process's environment (the variables parse_env and timeout_from_env look at).
EnvMap process_env();

/// HMOE_TIMEOUT_S from env (seconds, > 0), or kDefaultTimeoutSeconds.
std::chrono::milliseconds timeout_from_env(const EnvMap& env);

// ---- the Gloo device --------------------------------------------------------------------------

/// The network device that Gloo's process groups bind to. A World holds one, chosen from its
/// launcher environment (gloo_device_for) or given by its creator; every group made from the world
/// or from its world group (World::new_group, ParallelGroups::build with a caller's store) carries
/// it on. A group of one always binds to loopback (it has no peers).
///
/// Example:
///   dist::World world(info, my_store, timeout, /*use_cuda=*/false, GlooDevice::interface("eth0"));
struct GlooDevice {
  enum class Kind {
    kLoopback,     ///< 127.0.0.1: every rank runs on this host
    kInterface,    ///< the network interface `name` (e.g. "eth0"), as GLOO_SOCKET_IFNAME
    kAddress,      ///< the interface that owns the address (or host name) `name`
    kHostDefault,  ///< c10d's default: the address that this host's name resolves to
  };
  Kind kind = Kind::kLoopback;
  std::string name;  ///< interface, address or host name; empty for kLoopback and kHostDefault

  static GlooDevice loopback() { return GlooDevice{}; }
  static GlooDevice interface(std::string ifname);
  static GlooDevice address(std::string host);
  static GlooDevice host_default() { return GlooDevice{Kind::kHostDefault, ""}; }
  /// "loopback", "interface eth0", "address 10.0.0.5" or "host default".
  std::string to_string() const;
  bool operator==(const GlooDevice& o) const { return kind == o.kind && name == o.name; }
};

/// The Gloo device of a world: the first interface of GLOO_SOCKET_IFNAME in `env` if it is set;
/// else loopback for a world of one or a MASTER_ADDR on this host's loopback (127.x, localhost,
/// ::1, or a name that resolves there); else the address through which this host reaches
/// MASTER_ADDR (which the master can reach back, unlike a host name that resolves to 127.0.1.1),
/// or the host default if no route to MASTER_ADDR is found.
///
/// Example:
///   gloo_device_for(parse_env({{"RANK", "1"}, {"WORLD_SIZE", "2"}}), {})  // loopback
GlooDevice gloo_device_for(const EnvInfo& info, const EnvMap& env);

// ---- groups -----------------------------------------------------------------------------------

/// One process group as this rank sees it: a name (used in error messages), the world ranks of
/// its members in group-rank order, this rank's index among them, and the c10d process groups.
/// A Group with rank == -1 is one this process is not a member of (no process group).
struct Group {
  std::string name;
  std::vector<int64_t> ranks;  ///< world ranks of the members, index = group rank
  int64_t rank = -1;           ///< this process's index in `ranks`; -1 if not a member
  ProcessGroupPtr pg;          ///< carries CPU tensors (and, on LibTorch 2.x, every device)
  ProcessGroupPtr cuda_pg;     ///< carries CUDA tensors; null without a CUDA backend
  std::chrono::milliseconds timeout{static_cast<int64_t>(kDefaultTimeoutSeconds * 1000)};
  /// The device of its Gloo process group; groups built from this one bind to it too.
  GlooDevice gloo_device;

  int64_t size() const { return static_cast<int64_t>(ranks.size()); }
  bool is_member() const { return rank >= 0; }
  /// The process group for a tensor's device; raises an error naming the group if it has none.
  const ProcessGroupPtr& pg_for(const torch::Tensor& tensor) const;

  /// Wraps process groups the caller already has (e.g. from Python). `ranks` are the members'
  /// world ranks in group-rank order; their count must equal pg->getSize(). `gloo_device` is the
  /// device of the groups built from this one (c10d's default unless given).
  static Group from_process_group(std::string name, std::vector<int64_t> ranks, ProcessGroupPtr pg,
                                  ProcessGroupPtr cuda_pg = {},
                                  std::chrono::milliseconds timeout = std::chrono::milliseconds(
                                      static_cast<int64_t>(kDefaultTimeoutSeconds * 1000)),
                                  GlooDevice gloo_device = GlooDevice::host_default());
};

/// Options of init().
///
/// Example:
///   auto world = dist::init(dist::InitOptions().timeout_s(30));
struct InitOptions {
  /// Collective and rendezvous timeout in seconds; <= 0 means HMOE_TIMEOUT_S or 300 s.
  TORCH_ARG(double, timeout_s) = 0.0;
  /// "auto" (Gloo, plus NCCL when CUDA is available), "gloo" (CPU only) or "nccl".
  TORCH_ARG(std::string, backend) = "auto";
  /// Use this environment instead of the process's (tests).
  TORCH_ARG(c10::optional<EnvMap>, env) = c10::nullopt;
};

/// The world: this process's rank, the rendezvous store, the world group, and a factory of
/// subgroups. Create it with init(), or from a store of your own; keep it alive while any of its
/// groups is in use.
class World {
 public:
  /// Builds the world group over `store` (collective over info.world_size ranks). `gloo_device`:
  /// the device of every Gloo process group of this world; by default
  /// gloo_device_for(info, process_env()).
  World(EnvInfo info, StorePtr store, std::chrono::milliseconds timeout, bool use_cuda,
        c10::optional<GlooDevice> gloo_device = c10::nullopt);
  ~World();
  World(const World&) = delete;
  World& operator=(const World&) = delete;

  int64_t rank() const { return info_.rank; }
  int64_t size() const { return info_.world_size; }
  int64_t local_rank() const { return info_.local_rank; }
  const EnvInfo& env() const { return info_; }
  const StorePtr& store() const { return store_; }
  std::chrono::milliseconds timeout() const { return timeout_; }
  bool uses_cuda() const { return use_cuda_; }
  /// The network device of this world's Gloo process groups.
  const GlooDevice& gloo_device() const { return gloo_device_; }
  /// The group of every rank, named "world".
  const Group& group() const { return world_; }

  /// Creates the group of world ranks `ranks` (in group-rank order). Only members build the
  /// process group (over a PrefixStore named after `name` and a per-name generation count), so
  /// every member must call new_group for its groups in the same order; a non-member gets a
  /// Group with rank -1 without any communication.
  ///
  /// Example:
  ///   dist::Group pair = world->new_group("pair", {0, 1});
  Group new_group(const std::string& name, const std::vector<int64_t>& ranks);

  /// How many times this process asked for `key` before (0, 1, 2, ...): members of a group that
  /// ask in the same order get the same numbers, which keeps store prefixes of rebuilt groups
  /// apart.
  int64_t next_generation(const std::string& key) { return generations_[key]++; }

  /// Waits (over the store, with the timeout) until every rank has reached finalize(), so that
  /// rank 0's store server outlives every client. Idempotent.
  void finalize();

 private:
  EnvInfo info_;
  StorePtr store_;
  std::chrono::milliseconds timeout_;
  bool use_cuda_;
  GlooDevice gloo_device_;
  Group world_;
  std::map<std::string, int64_t> generations_;
  bool finalized_ = false;
};

/// Starts this process's part of the distributed run: parses the environment, rendezvous over a
/// TCPStore at MASTER_ADDR:MASTER_PORT (rank 0 serves it), and creates the world group. With no
/// launcher variables (or WORLD_SIZE = 1) it is a world of one over an in-process HashStore.
/// SIGPIPE is set to be ignored (if it has the default action) so that a dead peer surfaces as an
/// error of the next collective instead of killing this process.
///
/// Example:
///   auto world = hybridmoe::dist::init();
///   auto y = hybridmoe::dist::all_reduce_sum(x, world->group());
///   world->finalize();
std::shared_ptr<World> init(const InitOptions& options = InitOptions());

/// The rendezvous of a world of 2 or more ranks over a TCPStore at info.master_addr:master_port
/// (rank 0 serves it), bounded by `timeout` as a whole: a client waits for the server to accept
/// connections until the deadline, then every rank sets the store key hmoe/rank/<r>/arrived and
/// waits for all the others. On timeout every waiting rank raises an error naming itself, the
/// address and port, the timeout and the ranks that never arrived, e.g.
/// "rank 1: rendezvous at 127.0.0.1:29500 timed out after 3 s (HMOE_TIMEOUT_S): rank 2 of 3 never
/// arrived". Returns the store (its timeout set to `timeout`). Called by init().
StorePtr rendezvous(const EnvInfo& info, std::chrono::milliseconds timeout);

/// Builds the Group `name` of world ranks `ranks` (group-rank order) for the process of world
/// rank `world_rank`, over `store` under the key prefix `prefix` (unique per group and build).
/// Collective over the members only; a non-member gets rank -1 at once. A group of one uses a
/// private HashStore. Gloo binds to `gloo_device` (the world's).
Group make_group(const StorePtr& store, const std::string& prefix, const std::string& name,
                 const std::vector<int64_t>& ranks, int64_t world_rank, int64_t world_size,
                 std::chrono::milliseconds timeout, bool use_cuda, const GlooDevice& gloo_device);

/// Builds the process group(s) of one group of `size` ranks over `store` (already prefixed).
/// `rank` is this process's group rank; Gloo binds to `gloo_device` (loopback for a group of one).
compat::DeviceProcessGroups make_process_groups(const StorePtr& store, int64_t rank, int64_t size,
                                                const std::string& name,
                                                std::chrono::milliseconds timeout, bool use_cuda,
                                                const GlooDevice& gloo_device);

// ---- the local launcher -----------------------------------------------------------------------

/// Options of launch_local().
///
/// Example:
///   LaunchOptions opts;
///   opts.nproc = 4;
///   opts.command = {"./build/hmoe", "verify"};
///   int code = launch_local(opts).exit_code;
struct LaunchOptions {
  int64_t nproc = 1;  ///< ranks on this node (torchrun's --nproc-per-node)
  /// Nodes of the run and this node's index: this node starts ranks node_rank * nproc ... of a
  /// world of nnodes * nproc (torchrun's --nnodes, --node-rank).
  int64_t nnodes = 1;
  int64_t node_rank = 0;
  /// The rendezvous host (rank 0's node); every node must name the same.
  std::string master_addr = "127.0.0.1";
  std::vector<std::string> command;  ///< program and arguments (the program is looked up in PATH)
  /// Collective timeout passed to the ranks as HMOE_TIMEOUT_S; <= 0 leaves the variable alone.
  double timeout_s = 0.0;
  /// Wall-clock limit of the whole run in seconds (every rank is ended when it passes); <= 0: none.
  double max_time_s = 0.0;
  /// Rendezvous port; 0 picks a free one on a single node, kDefaultMasterPort across nodes.
  int64_t master_port = 0;
  /// Extra variables for every rank (override the inherited ones).
  EnvMap extra_env;
  /// End the other ranks (SIGTERM, then SIGKILL after grace_s) as soon as one fails.
  bool kill_on_failure = true;
  double grace_s = 3.0;
  /// Prefix each line of a rank's output with "[rank R] " (the launcher's own lines always get
  /// "[launch] ").
  bool prefix_output = true;
  /// With prefix_output: leave rank 0's stdout lines unprefixed. For commands that re-launch
  /// themselves (`hmoe train --nproc N`, verify, bench), whose result (a done line, JSON) rank 0
  /// prints on stdout; every stderr line and every other rank's line keeps its prefix.
  bool plain_lead_stdout = false;
  /// Where output lines go (line without its newline; rank -1: the launcher itself); default:
  /// stdout / stderr.
  std::function<void(int64_t rank, bool is_stderr, const std::string& line)> on_line;
};

/// One rank of a local run that ended abnormally (a non-zero exit code or a signal).
struct RankFailure {
  int64_t rank = -1;               ///< world rank
  int code = 0;                    ///< exit code, 128 + signal if a signal ended it
  int signal = 0;                  ///< the signal that ended it; 0 if it exited
  bool root_cause = false;         ///< the first rank to fail (not ended by the launcher)
  bool ended_by_launcher = false;  ///< the launcher's SIGTERM / SIGKILL ended it
  std::string last_error;          ///< the last non-empty line it printed on stderr ("" if none)
};

/// How a local run ended.
struct LaunchResult {
  /// 0, the first failing rank's code (128 + signal if killed), or 124 if max_time_s ran out.
  int exit_code = 0;
  int64_t failed_rank = -1;           ///< the first (world) rank that failed; -1 if none
  std::vector<int> rank_codes;        ///< each local rank's code, same convention
  bool timed_out = false;             ///< max_time_s was reached
  std::vector<RankFailure> failures;  ///< the ranks that failed, in the order they ended
};

/// The summary line of one failed rank (what launch_local prints after "[launch] "), e.g.
/// "rank 1 failed (root cause): SIGKILL (exit code 137); last error line: (none)" or
/// "rank 0 failed (consequence: ended by the launcher after rank 1 failed): SIGTERM (exit code
/// 143); last error line: ...". `root_rank`: the root cause's rank, -1 if the wall-clock limit
/// ended the run; `max_time_s`: that limit.
std::string describe_failure(const RankFailure& failure, int64_t root_rank, double max_time_s);

/// "SIGKILL", "SIGSEGV", ... for a signal number ("signal N" for one without a name here).
std::string signal_name(int signal);

/// Starts nproc copies of options.command with RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
/// GROUP_RANK and NODE_RANK (the node's index), MASTER_ADDR and MASTER_PORT set (and
/// OMP_NUM_THREADS=1, OPENBLAS_NUM_THREADS=1 unless already set), relays their output line by line,
/// and waits for all of them. If any rank failed, it then prints (as the launcher, rank -1 on
/// stderr) one line per failed rank in the order they ended (describe_failure): the first is the
/// root cause, the others consequences.
LaunchResult launch_local(const LaunchOptions& options);

/// A TCP port on 127.0.0.1 that was free a moment ago.
int64_t find_free_port();

}  // namespace hybridmoe::dist
