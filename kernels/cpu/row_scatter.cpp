// row_scatter.cpp — see row_scatter.h.
#include "row_scatter.h"

#include <ATen/Parallel.h>

#include "counting_sort.h"

namespace hybridmoe::kernels {

bool row_scatter_supported(const torch::Tensor& y) {
  return y.device().is_cpu() && y.dim() == 2 &&
         (y.scalar_type() == torch::kFloat || y.scalar_type() == torch::kDouble);
}

torch::Tensor scatter_add_rows_cpu(const torch::Tensor& y_in, const torch::Tensor& index_in,
                                   int64_t num_rows, const torch::Tensor& weight_in) {
  TORCH_CHECK(row_scatter_supported(y_in),
              "scatter_add_rows_cpu: expected a 2-D CPU float or "
              "double tensor, got ",
              y_in.sizes(), " ", y_in.scalar_type(), " on ", y_in.device());
  const int64_t A = y_in.size(0), d = y_in.size(1);
  TORCH_CHECK(index_in.dim() == 1 && index_in.size(0) == A, "scatter_add_rows_cpu: index must be [",
              A, "], got ", index_in.sizes());
  auto y = y_in.contiguous();
  auto index = index_in.to(torch::kCPU).contiguous();
  auto weight = weight_in.defined() ? weight_in.to(y.scalar_type()).contiguous() : torch::Tensor();
  auto out = torch::zeros({num_rows, d}, y.options());
  if (A == 0 || num_rows == 0) return out;
  // 1. Rows by output row: a counting pass keeps ascending i within each output row.
  const auto sorted = counting_argsort(index, num_rows, "scatter_add_rows_cpu:");
  const int64_t* rows = sorted.order.data_ptr<int64_t>();
  const int64_t* start = sorted.offsets.data();
  // 2. Each output row summed by one thread.
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "scatter_add_rows_cpu", [&] {
    const scalar_t* src = y.data_ptr<scalar_t>();
    const scalar_t* w = weight.defined() ? weight.data_ptr<scalar_t>() : nullptr;
    scalar_t* dst = out.data_ptr<scalar_t>();
    at::parallel_for(0, num_rows, 16, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        scalar_t* o = dst + t * d;
        for (int64_t j = start[t]; j < start[t + 1]; ++j) {
          const int64_t i = rows[j];
          const scalar_t* s = src + i * d;
          if (w != nullptr) {
            const scalar_t wi = w[i];
            for (int64_t c = 0; c < d; ++c) o[c] += wi * s[c];
          } else {
            for (int64_t c = 0; c < d; ++c) o[c] += s[c];
          }
        }
      }
    });
  });
  return out;
}

std::pair<torch::Tensor, torch::Tensor> weighted_gather_rows_backward_cpu(
    const torch::Tensor& dout_in, const torch::Tensor& index_in, const torch::Tensor& y_in,
    const torch::Tensor& weight_in) {
  TORCH_CHECK(row_scatter_supported(y_in) && row_scatter_supported(dout_in),
              "weighted_gather_rows_backward_cpu: expected 2-D CPU float or double tensors");
  const int64_t A = y_in.size(0), d = y_in.size(1);
  auto dout = dout_in.to(y_in.scalar_type()).contiguous();
  auto y = y_in.contiguous();
  auto index = index_in.to(torch::kCPU).contiguous();
  auto weight = weight_in.to(y.scalar_type()).contiguous();
  auto dy = torch::empty({A, d}, y.options());
  auto dweight = torch::empty({A}, y.options());
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "weighted_gather_rows_backward_cpu", [&] {
    const scalar_t* g = dout.data_ptr<scalar_t>();
    const scalar_t* src = y.data_ptr<scalar_t>();
    const scalar_t* w = weight.data_ptr<scalar_t>();
    const int64_t* idx = index.data_ptr<int64_t>();
    scalar_t* dys = dy.data_ptr<scalar_t>();
    scalar_t* dws = dweight.data_ptr<scalar_t>();
    at::parallel_for(0, A, 16, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const scalar_t* gi = g + idx[i] * d;
        const scalar_t* si = src + i * d;
        scalar_t* o = dys + i * d;
        const scalar_t wi = w[i];
        scalar_t dot = 0;
        for (int64_t c = 0; c < d; ++c) {
          o[c] = wi * gi[c];
          dot += gi[c] * si[c];
        }
        dws[i] = dot;
      }
    });
  });
  return {dy, dweight};
}

}  // namespace hybridmoe::kernels
