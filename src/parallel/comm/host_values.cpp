// host_values.cpp — sums and maxima of host values over a group's ranks (collectives.h): one
// all-gather of float64 values on the group's control device, reduced on the host in group-rank
// order so that the result is the same on every rank and independent of the transport's order.
#include <algorithm>

#include "hybridmoe/collectives.h"
#include "parallel/comm/work.h"

namespace hybridmoe::dist {
namespace {

// [P, n]: every rank's values, on the host.
torch::Tensor gather_values(const char* op, const std::vector<double>& values, const Group& g) {
  TORCH_CHECK(g.is_member(), op, ": this process is not a member of group '", g.name, "'");
  const int64_t n = static_cast<int64_t>(values.size());
  auto mine = torch::tensor(values, torch::kFloat64).view({1, n});
  if (g.size() == 1) return mine;
  mine = mine.to(detail::control_device(g));
  return detail::all_gather_rows_raw(op, mine, std::vector<int64_t>(g.size(), 1), g, Taping::kNever)
      .cpu();
}

}  // namespace

std::vector<double> sum_over_ranks(const std::vector<double>& values, const Group& group) {
  auto all = gather_values("sum_over_ranks", values, group).contiguous();
  std::vector<double> total(values.size(), 0.0);
  const double* p = all.data_ptr<double>();
  for (int64_t q = 0; q < all.size(0); ++q)
    for (size_t i = 0; i < values.size(); ++i) total[i] += p[q * all.size(1) + i];
  return total;
}

double sum_over_ranks(double value, const Group& group) {
  return sum_over_ranks(std::vector<double>{value}, group)[0];
}

double max_over_ranks(double value, const Group& group) {
  auto all = gather_values("max_over_ranks", {value}, group);
  return all.max().item<double>();
}

}  // namespace hybridmoe::dist
