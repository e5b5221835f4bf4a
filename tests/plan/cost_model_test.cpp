// cost_model_test.cpp — the planner's cost-model formulas (plan.h) on hand-computed cases: bytes
// per collective per layout, collective times, gradient-sync bytes under ZeRO 0 and 1, memory
// per rank, the pipeline bubble and the overlap's hidden time.
#include <gtest/gtest.h>

#include <optional>
#include <utility>
#include <vector>

#include "hybridmoe/plan.h"
#include "plan/tiny_model.h"

namespace hybridmoe {
namespace {

using testing::tiny_model;

// r set: the adaptive expert layout at degree r; unset: the fixed experts.
plan::Layout make(int64_t tp, int64_t dp, int64_t pp, int64_t ep, int64_t etp, int64_t zero = 0,
                  std::optional<int64_t> r = std::nullopt, int64_t D = 1, int64_t M = 1) {
  plan::Layout l;
  l.par = ParallelConfig{tp, dp, pp, ep, etp};
  l.zero = zero;
  if (r) {
    l.expert_layout = ExpertLayout::kAdaptive;
    l.adaptive_r = *r;
  }
  l.overlap = D;
  l.micro_batches = M;
  return l;
}

// Latency 0 and 1 byte/s: a collective's time is the bytes a rank moves through its link.
plan::MachineSpec bytes_machine() {
  plan::MachineSpec m;
  m.set_latency(false, 0.0);
  m.set_latency(true, 0.0);
  m.set_bandwidth(false, 1.0);
  m.set_bandwidth(true, 1.0);
  return m;
}

TEST(CostModel, CollectiveTimesFollowTheRingFormulas) {
  const plan::LinkFit link{1e-3, 1e6};  // 1 ms per step, 1 MB/s
  // all-reduce over 4 ranks of 1000 bytes: 2 * 3 * 1 ms + 2 * 3/4 * 1 ms
  EXPECT_DOUBLE_EQ(plan::collective_time(plan::Collective::kAllReduce, 4, 1000, link), 7.5e-3);
  EXPECT_DOUBLE_EQ(plan::collective_time(plan::Collective::kAllGather, 4, 1000, link), 3.75e-3);
  EXPECT_DOUBLE_EQ(plan::collective_time(plan::Collective::kReduceScatter, 4, 1000, link), 3.75e-3);
  EXPECT_DOUBLE_EQ(plan::collective_time(plan::Collective::kAllToAll, 2, 1000, link), 1.5e-3);
  EXPECT_DOUBLE_EQ(plan::collective_time(plan::Collective::kP2P, 2, 1000, link), 2e-3);
  EXPECT_EQ(plan::collective_time(plan::Collective::kAllReduce, 1, 1000, link), 0.0);
}

TEST(CostModel, BytesPerCollectiveOfAFixedLayout) {
  // tp2 dp2 ep2 etp1: T = 8 / 2 * 4 = 16 tokens per dp rank, Ts = 8 per tp slice.
  const plan::LayerTraffic t = plan::layer_traffic(tiny_model(), make(2, 2, 1, 2, 1));
  EXPECT_EQ(t.tokens, 16);
  EXPECT_EQ(t.slice_tokens, 8);
  EXPECT_DOUBLE_EQ(t.tp_all_reduce, 16 * 8 * 4);  // T d b = 512
  EXPECT_DOUBLE_EQ(t.slice_gather, 512);
  EXPECT_DOUBLE_EQ(t.a2a, 8 * 2 * 8 * 4);  // Ts k d b = 512 over ep = 2
  EXPECT_EQ(t.a2a_group, 2);
  EXPECT_DOUBLE_EQ(t.etp_rows, 0);
  EXPECT_DOUBLE_EQ(t.p2p, 0);
  // Experts: Pe = 2*8*16 + 16 + 8 = 280; 4 / ep = 2 local experts: 560 floats over edp.
  EXPECT_DOUBLE_EQ(t.expert_grads, 2 * 280 * 4);
  EXPECT_DOUBLE_EQ(t.gate_grads, 8 * 4 * 4);  // one gate d x E
  // Dense per rank: attention (4*64 + 24)/2 + 8 + 32 = 180 per block, the one dense MLP
  // (2*8*32 + 32)/2 + 8 = 280, embeddings (256 + 4) * 8 + 16 = 2096: 2*180 + 280 + 2096 = 2736.
  EXPECT_DOUBLE_EQ(t.dense_grads, 2736 * 4);
}

TEST(CostModel, BytesOfExpertTensorParallelAndPipeline) {
  // etp = tp = 2: rows of the etp group gathered (etp Ts k d b) and experts split in width.
  const plan::LayerTraffic e = plan::layer_traffic(tiny_model(), make(2, 2, 1, 2, 2));
  EXPECT_DOUBLE_EQ(e.etp_rows, 2 * 8 * 2 * 8 * 4);
  EXPECT_DOUBLE_EQ(e.expert_grads, 2 * 280 / 2 * 4);
  // pp = 2 with 2 micro-batches: T = 8 / (2 * 2) * 4 = 8; one block per stage (the MoE one).
  const plan::LayerTraffic p =
      plan::layer_traffic(tiny_model(), make(1, 2, 2, 2, 1, 0, std::nullopt, 1, 2));
  EXPECT_EQ(p.tokens, 8);
  EXPECT_DOUBLE_EQ(p.p2p, 8 * 8 * 4);
  EXPECT_DOUBLE_EQ(p.a2a, 8 * 2 * 8 * 4);
  // Slowest stage: 1 block, 1 MoE layer, so no dense MLP: 320 + 2096 floats.
  EXPECT_DOUBLE_EQ(p.dense_grads, (4 * 64 + 24 + 8 + 32 + 2096) * 4);
}

TEST(CostModel, BytesOfAdaptiveR) {
  // 8 ranks, 4 experts: S = 2 (storage: 1/2 of an expert per rank); T = Ts = 8 / 8 * 4 = 4.
  const plan::ModelSpec m = tiny_model();
  EXPECT_EQ(expert_placement(ExpertLayout::kAdaptive, /*stage_size=*/8, m.num_experts).shards, 2);
  const plan::LayerTraffic r2 = plan::layer_traffic(m, make(1, 8, 1, 1, 1, 0, 2));
  EXPECT_DOUBLE_EQ(r2.a2a, 4 * 2 * 8 * 4 * 2);  // every token to r = 2 ranks
  EXPECT_EQ(r2.a2a_group, 8);
  EXPECT_DOUBLE_EQ(r2.weight_gather, 0);  // r = S: no weight gather
  const plan::LayerTraffic r1 = plan::layer_traffic(m, make(1, 8, 1, 1, 1, 0, 1));
  EXPECT_DOUBLE_EQ(r1.a2a, 4 * 2 * 8 * 4);
  EXPECT_DOUBLE_EQ(r1.weight_gather, 280 * 4);  // whole expert gathered over S / r = 2
  EXPECT_EQ(r1.weight_group, 2);
  const plan::LayerTraffic r0 = plan::layer_traffic(m, make(1, 8, 1, 1, 1, 0, 0));
  EXPECT_DOUBLE_EQ(r0.a2a, 0);  // data parallel experts: no token exchange
  EXPECT_DOUBLE_EQ(r0.weight_gather, 4 * 280 * 4);
  EXPECT_EQ(r0.weight_group, 8);
  EXPECT_DOUBLE_EQ(r0.expert_grads, 0);  // summed by the weights' reduce-scatter
  EXPECT_NE(plan::check_layout(m, make(1, 8, 1, 1, 1, 0, 3)), "");  // 3 does not divide S
  EXPECT_NE(plan::check_layout(m, make(1, 8, 1, 2, 1, 0, 1)),
            "");  // adaptive places experts itself
}

TEST(CostModel, GradientSyncBytesWithZeroZeroAndOne) {
  // tp1 dp4 ep1: no tp or token collectives; dense 2*320 + 552 + 2096 = 3288 floats = 13152 B,
  // gate 128 B over the stage, experts 4 * 280 * 4 = 4480 B over edp = 4.
  const plan::ModelSpec m = tiny_model();
  const plan::ClusterSpec c{4, 0, 0.0};
  const plan::MachineSpec bytes = bytes_machine();
  const plan::Estimate z0 = plan::estimate(m, c, bytes, make(1, 4, 1, 1, 1, 0));
  const plan::Estimate z1 = plan::estimate(m, c, bytes, make(1, 4, 1, 1, 1, 1));
  const auto ar = static_cast<size_t>(plan::Collective::kAllReduce);
  const auto rs = static_cast<size_t>(plan::Collective::kReduceScatter);
  const auto ag = static_cast<size_t>(plan::Collective::kAllGather);
  const double optimizer_ar = 2 * (2 * 0.75 * 64 * 4);  // loss and norm: 768
  EXPECT_DOUBLE_EQ(z0.collective_s[ar], 1.5 * (13152 + 128 + 4480) + optimizer_ar);
  EXPECT_DOUBLE_EQ(z0.collective_s[rs], 0.0);
  EXPECT_DOUBLE_EQ(z1.collective_s[rs], 0.75 * (13152 + 4480));
  EXPECT_DOUBLE_EQ(z1.collective_s[ag], 0.75 * (13152 + 4480));
  EXPECT_DOUBLE_EQ(z1.collective_s[ar], 1.5 * 128 + optimizer_ar);
  EXPECT_DOUBLE_EQ(z0.grad_sync_s, z1.grad_sync_s);  // same ring bytes
}

TEST(CostModel, MemoryPerRank) {
  // tp2 dp2 ep2 etp1 (edp 2). Dense + gate 2736 + 32 floats, experts 2 * 280 floats.
  const plan::ModelSpec m = tiny_model();
  const plan::MemoryEstimate z0 = plan::memory_estimate(m, make(2, 2, 1, 2, 1, 0));
  const plan::MemoryEstimate z1 = plan::memory_estimate(m, make(2, 2, 1, 2, 1, 1));
  EXPECT_DOUBLE_EQ(z0.dense_params, 2768 * 4);
  EXPECT_DOUBLE_EQ(z0.expert_params, 560 * 4);
  EXPECT_DOUBLE_EQ(z0.params, 13312);
  EXPECT_DOUBLE_EQ(z0.grads, 13312);
  EXPECT_DOUBLE_EQ(z0.optimizer, 2 * 13312);
  EXPECT_DOUBLE_EQ(z1.optimizer, 2 * 11072 / 2 + 2 * 2240 / 2);  // over dp = 2 and edp = 2
  // Activations: T 16, Ts 8, 4 sequences per rank.
  //   block 16*4*(48 + 16) + 2*4*(2/2)*16*4 = 4608, dense MLP 16*4*2*32/2 = 2048,
  //   MoE 8*2*4*(24 + 32) + 16*8*4 = 4096, logits 2*16*256*4 = 32768.
  EXPECT_DOUBLE_EQ(z0.activations, 2 * 4608 + 2048 + 4096 + 32768);
  EXPECT_DOUBLE_EQ(z1.total(), 13312 * 2 + 13312 + 48128);
}

TEST(CostModel, ZeroOneExpertShardIsEpTimesLargerThanADpShard) {
  // tp1 dp4: with ep = 4 the experts are not replicated (edp 1), so ZeRO 1 keeps the whole expert
  // moments on each rank: ep times the shard that sharding over dp would give.
  const plan::ModelSpec m = tiny_model();
  for (int64_t ep : {1, 2, 4}) {
    const plan::MemoryEstimate mem = plan::memory_estimate(m, make(1, 4, 1, ep, 1, 1));
    EXPECT_DOUBLE_EQ(mem.expert_params, 4 / ep * 280 * 4);
    EXPECT_DOUBLE_EQ(mem.expert_optimizer, ep * (2 * mem.expert_params / 4)) << "ep " << ep;
  }
}

TEST(CostModel, PipelineActivationsHoldInFlightMicroBatches) {
  const plan::ModelSpec m = tiny_model();
  // pp = 2, 1 block per stage (the MoE one at stage 1, the slowest is counted with 1 MoE block).
  const plan::MemoryEstimate m2 =
      plan::memory_estimate(m, make(1, 2, 2, 2, 1, 0, std::nullopt, 1, 2));
  const plan::MemoryEstimate m4 =
      plan::memory_estimate(m, make(1, 2, 2, 2, 1, 0, std::nullopt, 1, 4));
  // T = 8 and 4; in flight min(pp, M) = 2 both; per micro-batch: block T*4*(48+32) + 2*seqs*2*16*4
  // and MoE Ts*2*4*56 + T*32 (Ts = T), logits 2*T*256*4.
  auto act = [](double T, double seqs) {
    return 2 * (T * 4 * 80 + 2 * seqs * 2 * 16 * 4 + T * 2 * 4 * 56 + T * 32) + 2 * T * 1024;
  };
  EXPECT_DOUBLE_EQ(m2.activations, act(8, 2));
  EXPECT_DOUBLE_EQ(m4.activations, act(4, 1));
}

TEST(CostModel, ComputeOfGemmsAttentionAndStreamedBytes) {
  // tp1 dp4 ep4, M 1: T = Ts = 8 tokens, 2 sequences of 4; 2 blocks, 1 of them MoE (1 local
  // expert). Forward per micro-batch:
  //   GEMM FLOPs: projections 2*2*8*8*32 = 8192, dense MLP 4*8*8*32 = 8192, gate 2*8*8*4 = 512,
  //     experts 4*8*2*8*16 = 8192, head 2*8*8*256 = 32768: 57856.
  //   attention FLOPs 2*4*8*4*8 = 2048.
  //   streamed bytes: tokens 2*16*8*8*4 = 8192, scores 2*4*2*2*16*4 = 2048, dense hidden
  //     2*8*32*4 = 2048, MoE 16*(2*16 + 6*8)*4 = 5120, logits 3*8*256*4 = 24576: 41984.
  //   GEMM calls 2*4 + 2 + (1 + 2) + 1 = 14, ops 2*24 + 40 = 88.
  const plan::ModelSpec m = tiny_model();
  plan::MachineSpec mach;
  mach.gemm_flops = 1e3;
  mach.attention_flops = 1e2;
  mach.stream_bytes_per_s = 1e1;
  mach.gemm_latency_s = 1e-1;
  mach.op_latency_s = 1e-2;
  const plan::Estimate e =
      plan::estimate(m, plan::ClusterSpec{4, 0, 0.0}, mach, make(1, 4, 1, 4, 1, 0));
  const double want = 3 * (57856 / 1e3 + 2048 / 1e2 + 41984 / 1e1 + 14 * 1e-1 + 88 * 1e-2);
  EXPECT_NEAR(e.compute_s, want, 1e-9 * want);
}

TEST(CostModel, PipelineBubbleFraction) {
  // A core per rank (core_sharing_test.cpp: fewer cores than ranks).
  const plan::ModelSpec m = tiny_model();
  const plan::ClusterSpec c{4, 0, 0.0};
  plan::MachineSpec mach;
  mach.cores = 4;
  for (int64_t M : {1, 2, 4}) {
    const plan::Estimate e = plan::estimate(m, c, mach, make(1, 2, 2, 2, 1, 0, std::nullopt, 1, M));
    const double pipeline = e.step_s - e.grad_sync_s - e.optimizer_s;
    EXPECT_NEAR(e.bubble_s / pipeline, 1.0 / (M + 1), 1e-12) << "M " << M;
  }
}

TEST(CostModel, OverlapHidesPartOfTheAllToAll) {
  // Latency 0: splitting into D chunks costs nothing and hides e * min(a2a, experts) * (1 - 1/D)
  // for the machine's overlap efficiency e (clamped to [0, 1]).
  const plan::ModelSpec m = tiny_model();
  const plan::ClusterSpec c{4, 0, 0.0};
  plan::MachineSpec mach;
  mach.set_latency(false, 0.0);
  mach.set_bandwidth(false, 1e6);
  mach.gemm_latency_s = 0;
  const plan::Layout l1 = make(1, 4, 1, 4, 1, 0, std::nullopt, 1),
                     l4 = make(1, 4, 1, 4, 1, 0, std::nullopt, 4);
  const plan::LayerTraffic t = plan::layer_traffic(m, l1);
  const double a2a =
      4 * plan::collective_time(plan::Collective::kAllToAll, 4, t.a2a, mach.intra[0]);
  const double experts = 3 * (4.0 * t.slice_tokens * 2 * 8 * 16) / mach.gemm_flops;
  for (const auto& [efficiency, used] :
       std::vector<std::pair<double, double>>{{1.0, 1.0}, {0.5, 0.5}, {0.0, 0.0}, {1.5, 1.0}}) {
    mach.overlap_efficiency = efficiency;
    const plan::Estimate e1 = plan::estimate(m, c, mach, l1), e4 = plan::estimate(m, c, mach, l4);
    EXPECT_DOUBLE_EQ(e1.hidden_s, 0.0);
    EXPECT_NEAR(e4.hidden_s, used * std::min(a2a, experts) * 0.75, 1e-15) << efficiency;
    EXPECT_NEAR(e1.step_s - e4.step_s, e4.hidden_s, 1e-12) << efficiency;
  }
}

TEST(CostModel, WithoutOverlapEfficiencyChunksOnlyAddLatency) {
  // e = 0 (communication competes with compute for the cores): D chunks hide nothing and pay the
  // all-to-all latency D times, so D > 1 is slower by exactly the extra latency terms.
  const plan::ModelSpec m = tiny_model();
  const plan::ClusterSpec c{4, 0, 0.0};
  plan::MachineSpec mach;
  mach.overlap_efficiency = 0.0;
  const plan::LinkFit& link = mach.intra[static_cast<size_t>(plan::Collective::kAllToAll)];
  const plan::Estimate e1 = plan::estimate(m, c, mach, make(1, 4, 1, 4, 1, 0, std::nullopt, 1));
  for (int64_t D : {2, 4}) {
    const plan::Estimate eD = plan::estimate(m, c, mach, make(1, 4, 1, 4, 1, 0, std::nullopt, D));
    EXPECT_DOUBLE_EQ(eD.hidden_s, 0.0);
    // 4 all-to-alls per MoE layer (1 MoE block), each paying (D - 1) * 3 more latency steps.
    EXPECT_NEAR(eD.step_s - e1.step_s, 4.0 * (D - 1) * 3 * link.latency_s, 1e-12) << D;
  }
}

TEST(CostModel, GroupsSpanNodesByRankOrder) {
  const ParallelConfig c{2, 2, 1, 2, 1};  // tp groups {0,1},{2,3}; dp groups {0,2},{1,3}
  EXPECT_FALSE(plan::spans_nodes(c, GroupKind::kTp, 2));
  EXPECT_TRUE(plan::spans_nodes(c, GroupKind::kDp, 2));
  EXPECT_FALSE(plan::spans_nodes(c, GroupKind::kDp, 4));
  EXPECT_FALSE(plan::spans_nodes(c, GroupKind::kDp, 0));
  // The same layout costs more when its dp group leaves the node.
  const plan::ModelSpec m = tiny_model();
  plan::MachineSpec mach;
  mach.set_bandwidth(true, 1e6);
  const plan::Estimate one =
      plan::estimate(m, plan::ClusterSpec{4, 4, 0.0}, mach, make(2, 2, 1, 2, 1));
  const plan::Estimate two =
      plan::estimate(m, plan::ClusterSpec{4, 2, 0.0}, mach, make(2, 2, 1, 2, 1));
  EXPECT_GT(two.grad_sync_s, one.grad_sync_s);
}

}  // namespace
}  // namespace hybridmoe
