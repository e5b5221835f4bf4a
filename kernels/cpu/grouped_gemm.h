// grouped_gemm.h — grouped matrix products over variable-sized, expert-contiguous row segments.
// Written with ATen's mm/addmm on segment views (no copies), so it runs on any device; a
// device-specific grouped kernel would sit beside it under kernels/<device>/.
#pragma once

#include <vector>

#include <torch/torch.h>

namespace hybridmoe::kernels {

/// out[seg_e] (+)= a[seg_e] @ op(b[e]) (+ bias[e]).
/// a: [A, K]; b: [E, K, N] (trans_b = false) or [E, N, K] (trans_b = true); bias: [E, N] or
/// undefined; out: [A, N] preallocated, contiguous. With accumulate, out is added to.
void grouped_mm(const torch::Tensor& a, const torch::Tensor& b, const std::vector<int64_t>& counts,
                bool trans_b, const torch::Tensor& bias, torch::Tensor& out,
                bool accumulate = false);

/// Per-segment a^T c: result[e] = a[seg_e]^T @ c[seg_e] (zero for empty segments).
/// a: [A, K]; c: [A, N] → [E, K, N].
torch::Tensor grouped_mm_tn(const torch::Tensor& a, const torch::Tensor& c,
                            const std::vector<int64_t>& counts);

/// Per-segment column sums. c: [A, N] → [E, N].
torch::Tensor segment_sum(const torch::Tensor& c, const std::vector<int64_t>& counts);

}  // namespace hybridmoe::kernels
