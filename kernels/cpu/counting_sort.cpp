// counting_sort.cpp — see counting_sort.h.
#include "counting_sort.h"

namespace hybridmoe::kernels {

bool counting_sort_supported(const torch::Tensor& keys) {
  return keys.device().is_cpu() && keys.dim() == 1 && keys.scalar_type() == torch::kInt64;
}

CountingOrder counting_argsort(const torch::Tensor& keys_in, int64_t bins, const char* what) {
  TORCH_CHECK(counting_sort_supported(keys_in), what,
              ": counting_argsort expects a 1-D int64 CPU tensor, got ", keys_in.sizes(), " ",
              keys_in.scalar_type(), " on ", keys_in.device());
  TORCH_CHECK(bins >= 0, what, ": the number of bins must be >= 0, got ", bins);
  const auto keys = keys_in.contiguous();
  const int64_t n = keys.size(0);
  const int64_t* k = keys.data_ptr<int64_t>();
  CountingOrder result;
  result.counts.assign(bins, 0);
  // 1. Count, refusing a key out of range.
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(k[i] >= 0 && k[i] < bins, what, " index out of range [0, ", bins, "): saw ", k[i]);
    ++result.counts[k[i]];
  }
  // 2. Each bin's first slot, then every key placed in index order.
  result.offsets.assign(bins + 1, 0);
  for (int64_t b = 0; b < bins; ++b) result.offsets[b + 1] = result.offsets[b] + result.counts[b];
  std::vector<int64_t> next(result.offsets.begin(), result.offsets.end() - 1);
  result.order = torch::empty({n}, torch::kInt64);
  int64_t* o = result.order.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) o[next[k[i]]++] = i;
  return result;
}

}  // namespace hybridmoe::kernels
