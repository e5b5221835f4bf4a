// counting_sort.h — the stable order of small-range integer keys (expert or token ids) by one
// counting pass and one placing pass, O(n + bins), where a comparison sort of all n keys would
// cost O(n log n). Equal to a stable argsort; the plain sort stays the path for other devices.
#pragma once

#include <vector>

#include <torch/torch.h>

namespace hybridmoe::kernels {

/// Whether counting_argsort runs these keys (a 1-D int64 CPU tensor).
bool counting_sort_supported(const torch::Tensor& keys);

/// The stable ascending order of `keys`, how many keys fall in each bin, and where each bin's
/// keys start in the order.
struct CountingOrder {
  torch::Tensor order;           // [n] int64: keys[order] ascending, equal keys in index order
  std::vector<int64_t> counts;   // [bins]
  std::vector<int64_t> offsets;  // [bins + 1]: bin b holds order[offsets[b] .. offsets[b + 1])
};

/// keys: [n] int64 in [0, bins); a key outside is refused: "<what> index out of range [0, bins):
/// saw <key>". bins: >= 0.
CountingOrder counting_argsort(const torch::Tensor& keys, int64_t bins, const char* what);

}  // namespace hybridmoe::kernels
