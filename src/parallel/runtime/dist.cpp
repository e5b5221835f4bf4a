// dist.cpp — start-up of a distributed run: launcher environment, TCPStore rendezvous, the world
// process group and subgroups (Gloo for CPU tensors, NCCL for CUDA tensors when available).
#include "hybridmoe/dist.h"

#include <signal.h>

#include <algorithm>
#include <cstdlib>
#include <set>
#include <sstream>
#include <thread>

#include <torch/csrc/distributed/c10d/HashStore.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#if HMOE_HAVE_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#ifdef USE_C10D_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include "parallel/runtime/peers.h"

extern char** environ;

namespace hybridmoe::dist {
namespace {

c10::optional<std::string> lookup(const EnvMap& env, const std::string& key) {
  auto it = env.find(key);
  if (it == env.end() || it->second.empty()) return c10::nullopt;
  return it->second;
}

/// Parses the leading integer of a variable ("4" or Slurm's "4(x2)").
int64_t parse_int(const std::string& key, const std::string& value) {
  size_t used = 0;
  int64_t v = 0;
  try {
    v = std::stoll(value, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  TORCH_CHECK(used > 0, "environment variable ", key, " should be an integer, got '", value, "'");
  return v;
}

int64_t int_or(const EnvMap& env, const std::string& key, int64_t fallback) {
  auto v = lookup(env, key);
  return v ? parse_int(key, *v) : fallback;
}

#if HMOE_HAVE_GLOO
/// The Gloo device of a group of `size` ranks that binds to `device`.
std::shared_ptr<::gloo::transport::Device> make_gloo_device(const GlooDevice& device,
                                                            int64_t size) {
  if (size == 1) return c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1");
  switch (device.kind) {
    case GlooDevice::Kind::kLoopback:
      return c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1");
    case GlooDevice::Kind::kInterface:
      return c10d::ProcessGroupGloo::createDeviceForInterface(device.name);
    case GlooDevice::Kind::kAddress:
      return c10d::ProcessGroupGloo::createDeviceForHostname(device.name);
    case GlooDevice::Kind::kHostDefault:
      return c10d::ProcessGroupGloo::createDefaultDevice();
  }
  C10_THROW_ERROR(Error, c10::str("unknown Gloo device kind ", static_cast<int>(device.kind)));
}
#endif

std::string join_ranks(const std::vector<int64_t>& ranks) {
  std::ostringstream out;
  for (size_t i = 0; i < ranks.size(); ++i) out << (i ? "," : "") << ranks[i];
  return out.str();
}

}  // namespace

std::string to_string(LaunchEnv env) {
  switch (env) {
    case LaunchEnv::kSingle:
      return "single";
    case LaunchEnv::kTorchrun:
      return "torchrun";
    case LaunchEnv::kOpenMPI:
      return "openmpi";
    case LaunchEnv::kSlurm:
      return "slurm";
  }
  return "unknown";
}

EnvInfo parse_env(const EnvMap& env) {
  EnvInfo info;
  info.node_rank = -1;  // unless a launcher names it: from the rank (below)
  // 1. Which launcher: torchrun's variables win, then OpenMPI's, then Slurm's.
  if (lookup(env, "RANK") && lookup(env, "WORLD_SIZE")) {
    info.source = LaunchEnv::kTorchrun;
    info.rank = parse_int("RANK", *lookup(env, "RANK"));
    info.world_size = parse_int("WORLD_SIZE", *lookup(env, "WORLD_SIZE"));
    info.local_rank = int_or(env, "LOCAL_RANK", info.rank);
    info.local_world_size = int_or(env, "LOCAL_WORLD_SIZE", info.world_size);
    info.node_rank = int_or(env, "GROUP_RANK", int_or(env, "NODE_RANK", -1));
  } else if (lookup(env, "OMPI_COMM_WORLD_RANK") && lookup(env, "OMPI_COMM_WORLD_SIZE")) {
    info.source = LaunchEnv::kOpenMPI;
    info.rank = int_or(env, "OMPI_COMM_WORLD_RANK", 0);
    info.world_size = int_or(env, "OMPI_COMM_WORLD_SIZE", 1);
    info.local_rank = int_or(env, "OMPI_COMM_WORLD_LOCAL_RANK", info.rank);
    info.local_world_size = int_or(env, "OMPI_COMM_WORLD_LOCAL_SIZE", info.world_size);
  } else if (lookup(env, "SLURM_PROCID") &&
             (lookup(env, "SLURM_NTASKS") || lookup(env, "SLURM_NPROCS"))) {
    info.source = LaunchEnv::kSlurm;
    info.rank = int_or(env, "SLURM_PROCID", 0);
    info.world_size = lookup(env, "SLURM_NTASKS") ? int_or(env, "SLURM_NTASKS", 1)
                                                  : int_or(env, "SLURM_NPROCS", 1);
    info.local_rank = int_or(env, "SLURM_LOCALID", info.rank);
    info.local_world_size =
        int_or(env, "SLURM_NTASKS_PER_NODE", int_or(env, "SLURM_TASKS_PER_NODE", info.world_size));
    info.node_rank = int_or(env, "SLURM_NODEID", -1);
  }
  // 2. Rendezvous address: the same variables for every launcher.
  if (auto addr = lookup(env, "MASTER_ADDR")) info.master_addr = *addr;
  info.master_port = int_or(env, "MASTER_PORT", kDefaultMasterPort);
  // 3. Consistency.
  TORCH_CHECK(info.world_size >= 1, "world size should be >= 1, got ", info.world_size, " (from ",
              to_string(info.source), " variables)");
  TORCH_CHECK(info.rank >= 0 && info.rank < info.world_size, "rank should be in [0, ",
              info.world_size, "), got ", info.rank, " (from ", to_string(info.source),
              " variables)");
  TORCH_CHECK(info.master_port > 0 && info.master_port < 65536,
              "MASTER_PORT should be in [1, 65535], got ", info.master_port);
  TORCH_CHECK(info.local_world_size >= 1 && info.world_size % info.local_world_size == 0,
              "ranks per node (local world size) should be >= 1 and divide the world size ",
              info.world_size, ", got ", info.local_world_size, " (from ", to_string(info.source),
              " variables)");
  // Without a count of ranks per node the whole world is one node of unknown order (a launcher
  // that sets LOCAL_RANK alone): the local rank is kept, the node layout is not checked.
  if (info.local_world_size == info.world_size) {
    TORCH_CHECK(info.local_rank >= 0, "local rank should be >= 0, got ", info.local_rank);
    info.node_rank = 0;
    return info;
  }
  TORCH_CHECK(info.local_rank >= 0 && info.local_rank < info.local_world_size,
              "local rank should be in [0, ", info.local_world_size, "), got ", info.local_rank,
              " (from ", to_string(info.source), " variables)");
  // Nodes hold consecutive ranks (see parse_env in dist.h).
  const int64_t node_of_rank = info.rank / info.local_world_size;
  if (info.node_rank < 0) info.node_rank = node_of_rank;
  TORCH_CHECK(
      info.node_rank == node_of_rank && info.rank % info.local_world_size == info.local_rank,
      "rank ", info.rank, " should be local rank ", info.rank % info.local_world_size, " of node ",
      node_of_rank, " (nodes of ", info.local_world_size, " consecutive ranks), but the ",
      to_string(info.source), " variables say local rank ", info.local_rank, " of node ",
      info.node_rank);
  return info;
}

EnvMap process_env() {
  EnvMap env;
  for (char** e = environ; e && *e; ++e) {
    std::string kv(*e);
    auto eq = kv.find('=');
    if (eq != std::string::npos) env[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  return env;
}

std::chrono::milliseconds timeout_from_env(const EnvMap& env) {
  double seconds = kDefaultTimeoutSeconds;
  if (auto v = lookup(env, "HMOE_TIMEOUT_S")) {
    try {
      seconds = std::stod(*v);
    } catch (const std::exception&) {
      seconds = -1;
    }
    TORCH_CHECK(seconds > 0, "HMOE_TIMEOUT_S should be a positive number of seconds, got '", *v,
                "'");
  }
  return std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000.0));
}

// ---- Group ------------------------------------------------------------------------------------

const ProcessGroupPtr& Group::pg_for(const torch::Tensor& tensor) const {
  TORCH_CHECK(is_member(), "this process is not a member of group '", name, "'");
  if (tensor.is_cuda()) {
    TORCH_CHECK(cuda_pg, "group '", name, "' has no CUDA backend (NCCL) for a ", tensor.device(),
                " tensor");
    return cuda_pg;
  }
  TORCH_CHECK(pg, "group '", name, "' has no process group");
  return pg;
}

Group Group::from_process_group(std::string name, std::vector<int64_t> ranks, ProcessGroupPtr pg,
                                ProcessGroupPtr cuda_pg, std::chrono::milliseconds timeout,
                                GlooDevice gloo_device) {
  TORCH_CHECK(pg, "from_process_group: a process group is required for group '", name, "'");
  TORCH_CHECK(static_cast<int64_t>(ranks.size()) == pg->getSize(), "group '", name, "' lists ",
              ranks.size(), " ranks but its process group has size ", pg->getSize());
  Group g;
  g.name = std::move(name);
  g.ranks = std::move(ranks);
  g.rank = pg->getRank();
  g.pg = std::move(pg);
  g.cuda_pg = std::move(cuda_pg);
  g.timeout = timeout;
  g.gloo_device = std::move(gloo_device);
  return g;
}

compat::DeviceProcessGroups make_process_groups(const StorePtr& store, int64_t rank, int64_t size,
                                                const std::string& name,
                                                std::chrono::milliseconds timeout, bool use_cuda,
                                                [[maybe_unused]] const GlooDevice& gloo_device) {
  TORCH_CHECK(rank >= 0 && rank < size, "make_process_groups: rank should be in [0, ", size,
              "), got ", rank, " for group '", name, "'");
  // 1. Gloo for CPU tensors, over its own prefix of the group's store.
  c10::intrusive_ptr<compat::C10dBackend> gloo;
#if HMOE_HAVE_GLOO
  auto gloo_options = c10d::ProcessGroupGloo::Options::create(timeout);
  gloo_options->devices.push_back(make_gloo_device(gloo_device, size));
  gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(
      c10::make_intrusive<c10d::PrefixStore>("gloo/", store), static_cast<int>(rank),
      static_cast<int>(size), gloo_options);
  // Gloo's constructor returns on a rank once its own connections are up, possibly before a peer
  // has finished its handshake; a group destroyed right away (a refused layer, a short-lived
  // layout) then closes a socket that peer still reads ("Connection closed by peer"). One barrier
  // makes every member leave construction only after all members have finished it.
  if (size > 1) gloo->barrier()->wait();
#else
  TORCH_CHECK(use_cuda, "group '", name,
              "': this hybridmoe was built against a LibTorch without "
              "gloo headers, so it has no CPU process groups; use CUDA tensors (NCCL)");
#endif
  // 2. NCCL for CUDA tensors (communicators are created lazily on the first collective).
  c10::intrusive_ptr<compat::C10dBackend> nccl;
#ifdef USE_C10D_NCCL
  if (use_cuda) {
    auto nccl_options = c10d::ProcessGroupNCCL::Options::create();
    nccl_options->timeout = timeout;
    nccl = c10::make_intrusive<c10d::ProcessGroupNCCL>(
        c10::make_intrusive<c10d::PrefixStore>("nccl/", store), static_cast<int>(rank),
        static_cast<int>(size), nccl_options);
  }
#else
  TORCH_CHECK(!use_cuda, "this build of LibTorch has no NCCL backend (group '", name, "')");
#endif
  // 3. One process group per device type (1.x) or one dispatching to both (2.x).
  return compat::wrap_backends(store, static_cast<int>(rank), static_cast<int>(size), gloo, nccl,
                               name, timeout);
}

// ---- World ------------------------------------------------------------------------------------

World::World(EnvInfo info, StorePtr store, std::chrono::milliseconds timeout, bool use_cuda,
             c10::optional<GlooDevice> gloo_device)
    : info_(std::move(info)),
      store_(std::move(store)),
      timeout_(timeout),
      use_cuda_(use_cuda),
      gloo_device_(gloo_device ? std::move(*gloo_device) : gloo_device_for(info_, process_env())) {
  std::vector<int64_t> all(info_.world_size);
  for (int64_t r = 0; r < info_.world_size; ++r) all[r] = r;
  world_ = new_group("world", all);
}

World::~World() = default;

Group make_group(const StorePtr& store, const std::string& prefix, const std::string& name,
                 const std::vector<int64_t>& ranks, int64_t world_rank, int64_t world_size,
                 std::chrono::milliseconds timeout, bool use_cuda, const GlooDevice& gloo_device) {
  TORCH_CHECK(!name.empty(), "make_group: a group name is required");
  TORCH_CHECK(!ranks.empty(), "make_group: group '", name, "' has no ranks");
  std::set<int64_t> seen;
  for (int64_t r : ranks) {
    TORCH_CHECK(r >= 0 && r < world_size, "make_group: group '", name, "' lists rank ", r,
                " outside the world of ", world_size);
    TORCH_CHECK(seen.insert(r).second, "make_group: group '", name, "' lists rank ", r, " twice");
  }
  Group g;
  g.name = name;
  g.ranks = ranks;
  g.timeout = timeout;
  g.gloo_device = gloo_device;
  auto it = std::find(ranks.begin(), ranks.end(), world_rank);
  if (it == ranks.end()) return g;  // not a member: nothing to build
  g.rank = it - ranks.begin();
  // 1. The group's own store: a prefix of the shared one, or private for a group of one.
  StorePtr group_store = g.size() == 1
                             ? StorePtr(c10::make_intrusive<c10d::HashStore>())
                             : StorePtr(c10::make_intrusive<c10d::PrefixStore>(prefix, store));
  // 2. The process groups; Gloo's constructor is the rendezvous of the members.
  auto pgs =
      make_process_groups(group_store, g.rank, g.size(), name, timeout, use_cuda, gloo_device);
  g.pg = pgs.cpu;
  g.cuda_pg = pgs.cuda;
  return g;
}

Group World::new_group(const std::string& name, const std::vector<int64_t>& ranks) {
  const std::string key = name + "[" + join_ranks(ranks) + "]";
  const std::string prefix = "hmoe/" + key + "/" + std::to_string(next_generation(key));
  return make_group(store_, prefix, name, ranks, rank(), size(), timeout_, use_cuda_, gloo_device_);
}

void World::finalize() {
  if (finalized_) return;
  finalized_ = true;
  if (size() == 1) return;
  // Every rank checks in; rank 0 (the store server) waits for all of them before going on.
  const std::string key = "hmoe/finalize";
  store_->add(key, 1);
  if (rank() != 0) return;
  const auto deadline = std::chrono::steady_clock::now() + timeout_;
  while (store_->add(key, 0) < size()) {
    TORCH_CHECK(std::chrono::steady_clock::now() < deadline, "finalize: only ", store_->add(key, 0),
                " of ", size(), " ranks arrived within ", timeout_.count(), " ms");
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

std::shared_ptr<World> init(const InitOptions& options) {
  // 1. Environment and timeout.
  const EnvMap env = options.env() ? *options.env() : process_env();
  EnvInfo info = parse_env(env);
  const auto timeout =
      options.timeout_s() > 0
          ? std::chrono::milliseconds(static_cast<int64_t>(options.timeout_s() * 1000.0))
          : timeout_from_env(env);
  // 2. Backends.
  const std::string& backend = options.backend();
  TORCH_CHECK(backend == "auto" || backend == "gloo" || backend == "nccl",
              "backend should be auto, gloo or nccl, got '", backend, "'");
  bool use_cuda = false;
#ifdef USE_C10D_NCCL
  use_cuda = backend != "gloo" && torch::cuda::is_available();
#endif
  TORCH_CHECK(backend != "nccl" || use_cuda,
              "backend nccl was asked for but CUDA or NCCL is not available");
  GlooDevice gloo_device = gloo_device_for(info, env);
  // A peer that dies closes its sockets; writing to them must raise an error (EPIPE), not kill
  // this process with SIGPIPE. Python ignores SIGPIPE at start-up and c10d relies on it; do the
  // same unless the program installed its own handler.
  struct sigaction current {};
  if (::sigaction(SIGPIPE, nullptr, &current) == 0 && current.sa_handler == SIG_DFL) {
    ::signal(SIGPIPE, SIG_IGN);
  }
  // 3. Rendezvous: rank 0 serves a TCPStore, the others connect; a world of one needs none.
  StorePtr store;
  if (info.world_size == 1) {
    store = c10::make_intrusive<c10d::HashStore>();
  } else {
    store = rendezvous(info, timeout);
    detail::publish_hosts(*store, info, gloo_device);  // for errors naming unreachable peers
  }
  // 4. The world group.
  return std::make_shared<World>(std::move(info), std::move(store), timeout, use_cuda,
                                 std::move(gloo_device));
}

}  // namespace hybridmoe::dist
