// collectives_flat.cpp — the flat in-place helpers of collectives.h (reduce_scatter_flat_,
// all_gather_flat_) that the sharded optimizer (ZeRO) moves its gradient and parameter buckets
// with. Uneven blocks: the reduce-scatter is an all-to-all followed by a local sum (Gloo has no
// uneven reduce-scatter); the all-gather pads every block to the largest one.
#include <algorithm>
#include <numeric>

#include "hybridmoe/collectives.h"
#include "parallel/comm/work.h"

namespace hybridmoe::dist {
namespace {

void check_counts(const char* op, const std::vector<int64_t>& counts, const Group& g,
                  const torch::Tensor& flat) {
  TORCH_CHECK(g.is_member(), op, ": this process is not a member of group '", g.name, "'");
  detail::check_splits(op, "counts", counts, g);
  const int64_t total = std::accumulate(counts.begin(), counts.end(), int64_t{0});
  TORCH_CHECK(flat.defined() && flat.dim() == 1 && flat.numel() == total, op,
              ": expected a flat tensor of ", total, " elements (the sum of counts), got ",
              flat.defined() ? flat.sizes() : c10::IntArrayRef{});
}

}  // namespace

void reduce_scatter_flat_(const torch::Tensor& flat, torch::Tensor& out,
                          const std::vector<int64_t>& counts, const Group& group) {
  const char* op = "reduce_scatter_flat_";
  check_counts(op, counts, group, flat);
  const int64_t mine = counts[group.rank];
  TORCH_CHECK(out.defined() && out.numel() == mine && out.scalar_type() == flat.scalar_type(), op,
              ": out should hold this rank's ", mine, " elements of dtype ", flat.scalar_type(),
              ", got ", out.defined() ? out.sizes() : c10::IntArrayRef{});
  torch::NoGradGuard no_grad;
  if (group.size() == 1) {
    out.copy_(flat);
    return;
  }
  // 1. Block j of every rank goes to rank j, 2. each rank sums the P copies of its block
  //    (16-bit floats in float32, rounded once).
  torch::Tensor received = all_to_all_async(op, flat, std::vector<int64_t>(group.size(), mine),
                                            counts, group, Taping::kNever)
                               .wait();
  if (mine == 0) return;
  auto blocks = received.view({group.size(), mine});
  if (flat.scalar_type() == torch::kBFloat16 || flat.scalar_type() == torch::kHalf)
    out.copy_(blocks.sum(0, /*keepdim=*/false, torch::kFloat32));
  else
    torch::sum_out(out, blocks, {0});
}

void all_gather_flat_(torch::Tensor& flat, const torch::Tensor& mine,
                      const std::vector<int64_t>& counts, const Group& group) {
  const char* op = "all_gather_flat_";
  check_counts(op, counts, group, flat);
  const int64_t n = counts[group.rank];
  TORCH_CHECK(mine.defined() && mine.numel() == n && mine.scalar_type() == flat.scalar_type(), op,
              ": expected this rank's block of ", n, " elements of dtype ", flat.scalar_type(),
              ", got ", mine.defined() ? mine.sizes() : c10::IntArrayRef{});
  torch::NoGradGuard no_grad;
  if (group.size() == 1) {
    if (!mine.is_same(flat)) flat.copy_(mine.reshape(-1));
    return;
  }
  // Every rank's block, in rank order, is the whole of `flat`.
  flat.copy_(detail::all_gather_rows_raw(op, mine.reshape(-1), counts, group, Taping::kNever));
}

}  // namespace hybridmoe::dist
