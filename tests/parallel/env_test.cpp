// env_test.cpp — start-up without peers: reading torchrun / OpenMPI / Slurm variables, the timeout
// variable, a world of one, and the local launcher on plain shell commands.
#include <signal.h>

#include <chrono>
#include <cstdlib>
#include <map>
#include <mutex>

#include <gtest/gtest.h>

#include "hybridmoe/collectives.h"
#include "hybridmoe/dist.h"
#include "hybridmoe/parallel.h"

namespace hybridmoe {
namespace {

TEST(Env, NoVariablesIsOneProcess) {
  const dist::EnvInfo e = dist::parse_env({});
  EXPECT_EQ(e.source, dist::LaunchEnv::kSingle);
  EXPECT_EQ(e.rank, 0);
  EXPECT_EQ(e.world_size, 1);
  EXPECT_EQ(e.master_addr, "127.0.0.1");
  EXPECT_EQ(e.master_port, dist::kDefaultMasterPort);
}

TEST(Env, Torchrun) {
  const dist::EnvInfo e = dist::parse_env({{"RANK", "5"},
                                           {"WORLD_SIZE", "8"},
                                           {"LOCAL_RANK", "1"},
                                           {"LOCAL_WORLD_SIZE", "4"},
                                           {"MASTER_ADDR", "node0"},
                                           {"MASTER_PORT", "1234"},
                                           // OpenMPI's variables lose to torchrun's
                                           {"OMPI_COMM_WORLD_RANK", "0"},
                                           {"OMPI_COMM_WORLD_SIZE", "2"}});
  EXPECT_EQ(e.source, dist::LaunchEnv::kTorchrun);
  EXPECT_EQ(e.rank, 5);
  EXPECT_EQ(e.world_size, 8);
  EXPECT_EQ(e.local_rank, 1);
  EXPECT_EQ(e.local_world_size, 4);
  EXPECT_EQ(e.master_addr, "node0");
  EXPECT_EQ(e.master_port, 1234);
}

TEST(Env, OpenMPI) {
  const dist::EnvInfo e = dist::parse_env({{"OMPI_COMM_WORLD_RANK", "3"},
                                           {"OMPI_COMM_WORLD_SIZE", "4"},
                                           {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
                                           {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"},
                                           {"SLURM_PROCID", "0"},
                                           {"SLURM_NTASKS", "9"}});
  EXPECT_EQ(e.source, dist::LaunchEnv::kOpenMPI);
  EXPECT_EQ(e.rank, 3);
  EXPECT_EQ(e.world_size, 4);
  EXPECT_EQ(e.local_rank, 1);
  EXPECT_EQ(e.local_world_size, 2);
  EXPECT_EQ(e.master_addr, "127.0.0.1");
  EXPECT_EQ(e.master_port, dist::kDefaultMasterPort);
}

TEST(Env, Slurm) {
  const dist::EnvInfo e = dist::parse_env({{"SLURM_PROCID", "6"},
                                           {"SLURM_NTASKS", "8"},
                                           {"SLURM_LOCALID", "2"},
                                           {"SLURM_NTASKS_PER_NODE", "4(x2)"},
                                           {"MASTER_ADDR", "10.0.0.1"},
                                           {"MASTER_PORT", "29600"}});
  EXPECT_EQ(e.source, dist::LaunchEnv::kSlurm);
  EXPECT_EQ(e.rank, 6);
  EXPECT_EQ(e.world_size, 8);
  EXPECT_EQ(e.local_rank, 2);
  EXPECT_EQ(e.local_world_size, 4);
  EXPECT_EQ(e.master_addr, "10.0.0.1");
  EXPECT_EQ(e.master_port, 29600);
}

TEST(Env, BadValuesAreRefused) {
  EXPECT_THROW(dist::parse_env({{"RANK", "x"}, {"WORLD_SIZE", "2"}}), c10::Error);
  EXPECT_THROW(dist::parse_env({{"RANK", "2"}, {"WORLD_SIZE", "2"}}), c10::Error);
  EXPECT_THROW(dist::parse_env({{"MASTER_PORT", "70000"}}), c10::Error);
  try {
    dist::parse_env({{"RANK", "3"}, {"WORLD_SIZE", "2"}});
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what_without_backtrace()).find("rank should be in [0, 2), got 3"),
              std::string::npos);
  }
}

TEST(Env, Timeout) {
  EXPECT_EQ(dist::timeout_from_env({}).count(), 300000);
  EXPECT_EQ(dist::timeout_from_env({{"HMOE_TIMEOUT_S", "2.5"}}).count(), 2500);
  EXPECT_THROW(dist::timeout_from_env({{"HMOE_TIMEOUT_S", "-1"}}), c10::Error);
  EXPECT_THROW(dist::timeout_from_env({{"HMOE_TIMEOUT_S", "soon"}}), c10::Error);
}

TEST(Env, EvenSplit) {
  EXPECT_EQ(dist::even_split(7, 3), (std::vector<int64_t>{3, 2, 2}));
  EXPECT_EQ(dist::even_split(2, 4), (std::vector<int64_t>{1, 1, 0, 0}));
  EXPECT_EQ(dist::even_split(0, 2), (std::vector<int64_t>{0, 0}));
}

TEST(SingleProcess, WorldOfOneRunsEveryCollective) {
  auto world = dist::init(dist::InitOptions().env(dist::EnvMap{}).timeout_s(10));
  ASSERT_EQ(world->size(), 1);
  EXPECT_EQ(world->rank(), 0);
  EXPECT_EQ(world->timeout().count(), 10000);
  const dist::Group& g = world->group();
  EXPECT_EQ(g.name, "world");
  EXPECT_EQ(g.ranks, (std::vector<int64_t>{0}));
  ASSERT_TRUE(g.pg);

  auto x = torch::arange(6, torch::kFloat64).view({3, 2}).requires_grad_();
  auto y = dist::all_to_all(x, {3}, {3}, g);
  y = dist::all_gather_rows(y, g);
  y = dist::reduce_scatter_rows(y, g);
  y = dist::all_reduce_sum(dist::copy_to_group(y, g), g);
  EXPECT_TRUE(torch::equal(y, x));
  (y * 2).sum().backward();
  EXPECT_TRUE(torch::equal(x.grad(), torch::full({3, 2}, 2.0, torch::kFloat64)));
  EXPECT_EQ(dist::exchange_counts(std::vector<int64_t>{4, 5}, g), (std::vector<int64_t>{4, 5}));
  std::vector<torch::Tensor> ts = {torch::ones({2})};
  dist::all_reduce_coalesced_(ts, g);
  dist::broadcast_(ts, 0, g);
  dist::barrier(g);
  EXPECT_TRUE(torch::equal(ts[0], torch::ones({2})));

  auto groups = ParallelGroups::build(ParallelConfig{}, *world);
  for (GroupKind kind : all_group_kinds()) {
    EXPECT_EQ(groups.get(kind).ranks, (std::vector<int64_t>{0})) << to_string(kind);
    EXPECT_EQ(groups.get(kind).rank, 0);
    EXPECT_EQ(groups.get(kind).name, to_string(kind));
  }
  EXPECT_THROW(ParallelGroups::build(ParallelConfig{2, 1, 1, 1, 1}, *world), c10::Error);
  world->finalize();
}

TEST(SingleProcess, AssembleFromGivenGroups) {
  auto world = dist::init(dist::InitOptions().env(dist::EnvMap{}));
  std::map<GroupKind, dist::Group> given = {{GroupKind::kWorld, world->group()}};
  auto groups = ParallelGroups::assemble(ParallelConfig{}, given);
  EXPECT_EQ(groups.ep.ranks, (std::vector<int64_t>{0}));
  EXPECT_EQ(groups.world.pg.get(), world->group().pg.get());
  given[GroupKind::kTp] = dist::Group::from_process_group("tp", {0}, world->group().pg);
  EXPECT_NO_THROW(ParallelGroups::assemble(ParallelConfig{}, given));
  EXPECT_THROW(dist::Group::from_process_group("tp", {0, 1}, world->group().pg), c10::Error);
}

// ---- the launcher -----------------------------------------------------------------------------

struct Captured {
  std::mutex mutex;
  std::map<int64_t, std::vector<std::string>> out, err;
};

dist::LaunchOptions shell(int64_t nproc, const std::string& script, Captured* cap) {
  dist::LaunchOptions o;
  o.nproc = nproc;
  o.command = {"/bin/sh", "-c", script};
  o.on_line = [cap](int64_t rank, bool is_stderr, const std::string& line) {
    std::lock_guard<std::mutex> lock(cap->mutex);
    (is_stderr ? cap->err : cap->out)[rank].push_back(line);
  };
  return o;
}

TEST(Launcher, SetsVariablesAndRelaysLines) {
  Captured cap;
  auto o = shell(3,
                 "echo \"$RANK $WORLD_SIZE $LOCAL_RANK $LOCAL_WORLD_SIZE $MASTER_ADDR "
                 "$OMP_NUM_THREADS $OPENBLAS_NUM_THREADS $HMOE_TIMEOUT_S $EXTRA\"; "
                 "echo oops >&2; printf 'no newline'",
                 &cap);
  o.timeout_s = 7;
  o.extra_env = {{"EXTRA", "x"}, {"OPENBLAS_NUM_THREADS", "2"}};
  const dist::LaunchResult r = dist::launch_local(o);
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.failed_rank, -1);
  EXPECT_EQ(r.rank_codes, (std::vector<int>{0, 0, 0}));
  const char* omp = std::getenv("OMP_NUM_THREADS");
  const std::string omp_expected = omp && *omp ? omp : "1";
  for (int64_t rank = 0; rank < 3; ++rank) {
    ASSERT_EQ(cap.out[rank].size(), 2u) << rank;
    const std::string timeout = std::to_string(7.0);
    EXPECT_EQ(cap.out[rank][0], std::to_string(rank) + " 3 " + std::to_string(rank) +
                                    " 3 127.0.0.1 " + omp_expected + " 2 " + timeout + " x");
    EXPECT_EQ(cap.out[rank][1], "no newline");
    EXPECT_EQ(cap.err[rank], (std::vector<std::string>{"oops"}));
  }
}

// Node 1 of 2 nodes x 2 ranks: world ranks 2 and 3, the node's index, the given master, and
// output and failures under world ranks.
TEST(Launcher, NodeOfSeveral) {
  Captured cap;
  auto o = shell(2,
                 "echo \"$RANK $WORLD_SIZE $LOCAL_RANK $LOCAL_WORLD_SIZE $GROUP_RANK $NODE_RANK "
                 "$MASTER_ADDR $MASTER_PORT\"; [ \"$RANK\" = 3 ] && exit 5; exit 0",
                 &cap);
  o.nnodes = 2;
  o.node_rank = 1;
  o.master_addr = "10.1.2.3";
  o.kill_on_failure = false;  // rank 2 ends on its own
  const dist::LaunchResult r = dist::launch_local(o);
  EXPECT_EQ(r.exit_code, 5);
  EXPECT_EQ(r.failed_rank, 3);
  EXPECT_EQ(r.rank_codes, (std::vector<int>{0, 5}));
  ASSERT_EQ(r.failures.size(), 1u);
  EXPECT_EQ(r.failures[0].rank, 3);
  EXPECT_TRUE(r.failures[0].root_cause);
  EXPECT_EQ(cap.out[2], (std::vector<std::string>{"2 4 0 2 1 1 10.1.2.3 29500"}));
  EXPECT_EQ(cap.out[3], (std::vector<std::string>{"3 4 1 2 1 1 10.1.2.3 29500"}));
  o.node_rank = 2;
  EXPECT_THROW(dist::launch_local(o), c10::Error);
}

TEST(Launcher, FailureEndsTheOthersAndGivesTheCode) {
  Captured cap;
  auto o = shell(3, "if [ \"$RANK\" = 1 ]; then sleep 0.2; exit 7; fi; exec sleep 30", &cap);
  o.grace_s = 1;
  const auto start = std::chrono::steady_clock::now();
  const dist::LaunchResult r = dist::launch_local(o);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(r.exit_code, 7);
  EXPECT_EQ(r.failed_rank, 1);
  EXPECT_EQ(r.rank_codes, (std::vector<int>{128 + SIGTERM, 7, 128 + SIGTERM}));
  EXPECT_LT(seconds, 10.0);
}

TEST(Launcher, StubbornRankIsKilled) {
  Captured cap;
  auto o =
      shell(2, "if [ \"$RANK\" = 0 ]; then sleep 0.5; exit 3; fi; trap '' TERM; sleep 30", &cap);
  o.grace_s = 0.5;
  const auto start = std::chrono::steady_clock::now();
  const dist::LaunchResult r = dist::launch_local(o);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_EQ(r.rank_codes[1], 128 + SIGKILL);
  EXPECT_LT(seconds, 10.0);
}

TEST(Launcher, WallClockLimit) {
  Captured cap;
  auto o = shell(2, "exec sleep 30", &cap);
  o.max_time_s = 0.5;
  o.grace_s = 0.5;
  const dist::LaunchResult r = dist::launch_local(o);
  EXPECT_TRUE(r.timed_out);
  EXPECT_EQ(r.exit_code, 124);
  EXPECT_EQ(r.failed_rank, -1);
}

TEST(Launcher, MissingProgram) {
  Captured cap;
  dist::LaunchOptions o = shell(1, "", &cap);
  o.command = {"/nonexistent/program"};
  const dist::LaunchResult r = dist::launch_local(o);
  EXPECT_EQ(r.exit_code, 127);
  EXPECT_THROW(dist::launch_local(dist::LaunchOptions()), c10::Error);  // no command
}

TEST(Launcher, FreePort) {
  const int64_t port = dist::find_free_port();
  EXPECT_GT(port, 0);
  EXPECT_LT(port, 65536);
}

}  // namespace
}  // namespace hybridmoe
