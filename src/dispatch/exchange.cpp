// exchange.cpp — see exchange.h: slice scatter/gather and the expert-parallel token exchange.
#include "hybridmoe/detail/exchange.h"

#include <numeric>

#include "hybridmoe/collectives.h"
#include "hybridmoe/detail/comm_tape.h"
#include "hybridmoe/detail/hierarchical_all_to_all.h"

namespace hybridmoe {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

namespace {

// The group rides through autograd's saved_data in a capsule.
struct GroupCapsule : torch::CustomClassHolder {
  explicit GroupCapsule(dist::Group g) : group(std::move(g)) {}
  dist::Group group;
};
c10::IValue pack(const dist::Group& g) {
  return c10::IValue::make_capsule(c10::make_intrusive<GroupCapsule>(g));
}
const dist::Group& unpack(const c10::IValue& v) {
  return static_cast<GroupCapsule*>(v.toCapsule().get())->group;
}

int64_t offset_of(const std::vector<int64_t>& rows, int64_t rank) {
  return std::accumulate(rows.begin(), rows.begin() + rank, int64_t{0});
}

void check_rows(const dist::Group& g, const std::vector<int64_t>& rows, const char* op) {
  TORCH_CHECK(g.is_member(), op, ": this rank is not a member of group ", g.name);
  TORCH_CHECK(static_cast<int64_t>(rows.size()) == g.size(), op, ": rows_per_rank needs ", g.size(),
              " entries for group ", g.name, ", got ", rows.size());
}

// Forward: this rank's block. Backward: all-gather of the block gradients.
struct ScatterToSlicesFn : torch::autograd::Function<ScatterToSlicesFn> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x,
                               std::vector<int64_t> rows, const dist::Group& g) {
    ctx->saved_data["rows"] = rows;
    ctx->saved_data["group"] = pack(g);
    return x.narrow(0, offset_of(rows, g.rank), rows[g.rank]).clone();
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto& g = unpack(ctx->saved_data["group"]);
    auto rows = ctx->saved_data["rows"].toIntVector();
    torch::NoGradGuard no_grad;
    return {dist::all_gather_rows(grads[0].contiguous(), g, rows), torch::Tensor(),
            torch::Tensor()};
  }
};

// Forward: all-gather of the blocks. Backward: this rank's block of the gradient.
struct GatherFromSlicesFn : torch::autograd::Function<GatherFromSlicesFn> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& y,
                               std::vector<int64_t> rows, const dist::Group& g) {
    ctx->saved_data["rows"] = rows;
    ctx->saved_data["rank"] = g.rank;
    return dist::all_gather_rows(y.contiguous(), g, rows);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto rows = ctx->saved_data["rows"].toIntVector();
    const auto rank = ctx->saved_data["rank"].toInt();
    return {grads[0].narrow(0, offset_of(rows, rank), rows[rank]).clone(), torch::Tensor(),
            torch::Tensor()};
  }
};

}  // namespace

torch::Tensor scatter_to_slices(const torch::Tensor& x, const dist::Group& group,
                                const std::vector<int64_t>& rows_per_rank) {
  check_rows(group, rows_per_rank, "scatter_to_slices");
  const int64_t total = offset_of(rows_per_rank, group.size());
  TORCH_CHECK(x.dim() >= 1 && x.size(0) == total, "scatter_to_slices: x must have ", total,
              " rows, got ", x.sizes());
  if (group.size() == 1) return x;
  return ScatterToSlicesFn::apply(x, rows_per_rank, group);
}

torch::Tensor gather_from_slices(const torch::Tensor& y, const dist::Group& group,
                                 const std::vector<int64_t>& rows_per_rank) {
  check_rows(group, rows_per_rank, "gather_from_slices");
  TORCH_CHECK(y.dim() >= 1 && y.size(0) == rows_per_rank[group.rank],
              "gather_from_slices: y must "
              "have ",
              rows_per_rank[group.rank], " rows on rank ", group.rank, ", got ", y.sizes());
  if (group.size() == 1) return y;
  return GatherFromSlicesFn::apply(y, rows_per_rank, group);
}

ExpertMajorOrder expert_major_index(const std::vector<std::vector<int64_t>>& block_counts) {
  const size_t B = block_counts.size();
  const size_t L = B == 0 ? 0 : block_counts[0].size();
  // 1. Start of each (block, expert) run in the block layout.
  std::vector<std::vector<int64_t>> start(B, std::vector<int64_t>(L, 0));
  int64_t offset = 0;
  for (size_t b = 0; b < B; ++b) {
    TORCH_CHECK(block_counts[b].size() == L, "expert_major_index: block ", b, " has ",
                block_counts[b].size(), " experts, expected ", L);
    for (size_t e = 0; e < L; ++e) {
      start[b][e] = offset;
      offset += block_counts[b][e];
    }
  }
  // 2. Walk expert-major: expert, then block, then the run's rows.
  std::vector<int64_t> index;
  index.reserve(offset);
  std::vector<int64_t> per_expert(L, 0);
  for (size_t e = 0; e < L; ++e)
    for (size_t b = 0; b < B; ++b) {
      for (int64_t i = 0; i < block_counts[b][e]; ++i) index.push_back(start[b][e] + i);
      per_expert[e] += block_counts[b][e];
    }
  ExpertMajorOrder order;
  order.index = torch::tensor(index, torch::kInt64);
  order.inverse = torch::empty_like(order.index)
                      .index_put_({order.index}, torch::arange(order.index.numel(), torch::kInt64));
  order.per_expert = std::move(per_expert);
  return order;
}

ExchangePlan make_exchange_plan(const DispatchPlan& plan, const dist::Group& ep) {
  const int64_t P = ep.size();
  const int64_t E = static_cast<int64_t>(plan.counts_host.size());
  TORCH_CHECK(ep.is_member(), "make_exchange_plan: this rank is not in group ", ep.name);
  TORCH_CHECK(E % P == 0, "make_exchange_plan: ", E, " experts do not divide over the ", P,
              " ranks of group ", ep.name);
  // What each rank sends to each of my experts.
  return make_exchange_plan(plan.counts_host, dist::exchange_counts(plan.counts_host, ep), P);
}

ExchangePlan make_exchange_plan(const std::vector<int64_t>& send_counts,
                                const std::vector<int64_t>& recv_counts, int64_t P) {
  const int64_t E = static_cast<int64_t>(send_counts.size());
  TORCH_CHECK(P >= 1 && E % P == 0 && static_cast<int64_t>(recv_counts.size()) == E,
              "make_exchange_plan: ", E, " send and ", recv_counts.size(),
              " receive counts do not make P * L slots for P = ", P, " ranks");
  ExchangePlan xp;
  const int64_t L = E / P;
  xp.num_local_experts = L;
  // 1. Rows to each rank: the sum of the counts of its slots.
  xp.send_splits.assign(P, 0);
  for (int64_t e = 0; e < E; ++e) xp.send_splits[e / L] += send_counts[e];
  // 2. Rows from each rank, per local expert.
  xp.recv_counts = recv_counts;
  xp.recv_splits.assign(P, 0);
  std::vector<std::vector<int64_t>> blocks(P, std::vector<int64_t>(L, 0));
  for (int64_t j = 0; j < P; ++j)
    for (int64_t e = 0; e < L; ++e) {
      blocks[j][e] = xp.recv_counts[j * L + e];
      xp.recv_splits[j] += blocks[j][e];
    }
  // 3. Received rows are source-major; the experts want them expert-major.
  auto order = expert_major_index(blocks);
  xp.to_expert_major = order.index;
  xp.from_expert_major = order.inverse;
  xp.local_counts = order.per_expert;
  return xp;
}

namespace {

// The plan's all-to-all of x: [sum(in), d] → [sum(out), d] (out / in: rows from / to each rank of
// ep), its cross-node traffic counted when the plan knows the nodes.
torch::Tensor plan_all_to_all(const torch::Tensor& x, const std::vector<int64_t>& out,
                              const std::vector<int64_t>& in, const ExchangePlan& xp,
                              const dist::Group& ep) {
  if (xp.algorithm == A2AAlgorithm::kHierarchical) {
    TORCH_CHECK(xp.ranks_per_node > 0,
                "exchange_tokens: the hierarchical all-to-all needs the plan's ranks per node, "
                "got ",
                xp.ranks_per_node);
    dist::CrossNodeTraffic t;
    auto y = dist::hierarchical_all_to_all(x, out, in, ep, xp.ranks_per_node, &t);
    dist::record_cross_node_traffic(t);
    return y;
  }
  // A recomputed forward replaying its all-to-all from the tape (comm_tape.h) sends nothing.
  const bool replaying = dist::CommTape::active() != nullptr &&
                         dist::CommTape::active_mode() == dist::CommTape::Mode::kReplay;
  if (xp.ranks_per_node > 0 && ep.size() > 1 && !replaying) {
    const int64_t row_bytes = x.size(1) * static_cast<int64_t>(x.element_size());  // x: [A, d]
    dist::record_cross_node_traffic(
        dist::flat_cross_node_traffic(in, row_bytes, ep, xp.ranks_per_node));
  }
  return dist::all_to_all(x, out, in, ep);
}

}  // namespace

torch::Tensor exchange_tokens(const torch::Tensor& rows, const ExchangePlan& xp,
                              const dist::Group& ep) {
  auto received = plan_all_to_all(rows, xp.recv_splits, xp.send_splits, xp, ep);
  return gather_rows(received, xp.to_expert_major.to(received.device()));
}

torch::Tensor exchange_back(const torch::Tensor& y, const ExchangePlan& xp, const dist::Group& ep) {
  auto source_major = gather_rows(y, xp.from_expert_major.to(y.device()));
  return plan_all_to_all(source_major, xp.send_splits, xp.recv_splits, xp, ep);
}

}  // namespace hybridmoe
