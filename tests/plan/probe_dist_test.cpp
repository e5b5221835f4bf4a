// probe_dist_test.cpp — the machine probe of the planner (plan.h, src/plan/probe.cpp) on 2 ranks:
// finite, non-negative figures, a plausible GEMM rate and overlap efficiency, the local cores, and
// the same figures on every rank.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "hybridmoe/collectives.h"
#include "hybridmoe/plan.h"
#include "support/multirank.h"

namespace hybridmoe {
namespace {

TEST(Planner, ProbeGivesTheSameFiguresOnEveryRank) {
  testing::run_on_ranks(2, [](testing::RankContext& ctx) {
    const plan::MachineSpec m = plan::probe_machine(ctx.world);
    std::vector<double> v = {m.gemm_flops, m.gemm_latency_s, m.op_latency_s};
    for (const auto& l : m.intra) v.push_back(l.latency_s), v.push_back(1.0 / l.bytes_per_s);
    for (double x : v) EXPECT_TRUE(std::isfinite(x) && x >= 0) << x;
    EXPECT_GT(m.gemm_flops, 1e6);
    EXPECT_TRUE(m.overlap_efficiency >= 0.0 && m.overlap_efficiency <= 1.0) << m.overlap_efficiency;
    v.push_back(m.overlap_efficiency);
    EXPECT_EQ(m.source, "probe");
    // Both ranks run on this machine: the cores this process may run on.
    EXPECT_EQ(m.cores, plan::local_cores());
    v.push_back(static_cast<double>(m.cores));
    const auto t = torch::tensor(v, torch::kFloat64);
    auto gathered = dist::all_gather_rows(t.unsqueeze(0), ctx.group());
    EXPECT_TRUE(torch::equal(gathered[0], gathered[1]));
  });
}

}  // namespace
}  // namespace hybridmoe
