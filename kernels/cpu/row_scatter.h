// row_scatter.h — the combine's row movements on the CPU without atomics or per-row dispatch:
// rows that go to the same output row are found by a stable sort of the index (a CSR by output
// row), and each output row is summed by one thread in index order — the order of
// Tensor::index_add_, so results match it. The plain ATen compositions (index_add_, mul, sum)
// are the reference and the path for other devices.
#pragma once

#include <torch/torch.h>

namespace hybridmoe::kernels {

/// Whether the kernels below run this tensor (CPU, float or double, 2-D).
bool row_scatter_supported(const torch::Tensor& y);

/// out[t] = sum over i with index[i] = t of weight[i] * y[i] (weight undefined: 1), in
/// ascending i; rows no index names are zero.
/// y: [A, d]; index: [A] int64 in [0, num_rows); weight: [A] or undefined → [num_rows, d].
torch::Tensor scatter_add_rows_cpu(const torch::Tensor& y, const torch::Tensor& index,
                                   int64_t num_rows, const torch::Tensor& weight);

/// The backward of the weighted scatter-add: dy[i] = weight[i] * dout[index[i]] and
/// dweight[i] = <dout[index[i]], y[i]>, in one pass over the rows.
/// dout: [num_rows, d]; index: [A]; y: [A, d]; weight: [A] → {dy [A, d], dweight [A]}.
std::pair<torch::Tensor, torch::Tensor> weighted_gather_rows_backward_cpu(
    const torch::Tensor& dout, const torch::Tensor& index, const torch::Tensor& y,
    const torch::Tensor& weight);

}  // namespace hybridmoe::kernels
