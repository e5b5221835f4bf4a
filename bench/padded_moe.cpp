// padded_moe.cpp — see padded_moe.h. Plain LibTorch ops throughout, so autograd gives the
// backward: the scatter's is a gather, the gather's a scatter, bmm's two bmm calls per projection.
#include "padded_moe.h"

namespace hybridmoe::bench {

namespace {

// The expert activation on the padded buffer: the same ops as the grouped MLP's, written here
// again on purpose (the baseline shares no code with the layer it is checked against).
// a, g: [E, capacity, h] (g: SwiGLU's gate, else undefined) → [E, capacity, h].
torch::Tensor padded_activate(const torch::Tensor& a, const torch::Tensor& g, Activation act) {
  switch (act) {
    case Activation::kGelu:
      return torch::gelu(a);
    case Activation::kRelu:
      return torch::relu(a);
    case Activation::kSwiGLU:
      return torch::silu(a) * g;
  }
  C10_THROW_ERROR(Error, c10::str("padded MoE: unknown activation ", static_cast<int>(act)));
}

// One projection of every expert at once: x [E, C, in] × w [E, in, out] (+ b [E, out]).
torch::Tensor project(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) {
  auto y = torch::bmm(x, w);
  return b.defined() ? y + b.unsqueeze(1) : y;
}

}  // namespace

torch::Tensor padded_experts_combine(const torch::Tensor& x, const RouterOutput& routing,
                                     const ExpertWeights& w, Activation activation,
                                     int64_t* capacity) {
  TORCH_CHECK(x.dim() == 2, "padded MoE: expected x as [tokens, d_model], got ", x.sizes());
  TORCH_CHECK(w.w1.defined() && w.w1.dim() == 3 && w.w1.size(1) == x.size(1),
              "padded MoE: expected w1 as [E, d_model=", x.size(1), ", h], got ",
              w.w1.defined() ? w.w1.sizes() : c10::IntArrayRef{});
  TORCH_CHECK(activation != Activation::kSwiGLU || w.w3.defined(),
              "padded MoE: SwiGLU needs w3, which is undefined");
  const int64_t experts = w.w1.size(0), d = x.size(1);
  const auto& expert = routing.expert_index;  // [A]
  // 1. Slots, as Tutel computes them: each assignment's rank among its expert's assignments (a
  //    cumulative sum over the one-hot mask); the capacity is the largest expert's count.
  auto one_hot = torch::one_hot(expert, experts);                                 // [A, E]
  auto slot = (one_hot.cumsum(0) - 1).gather(1, expert.unsqueeze(1)).squeeze(1);  // [A]
  const int64_t cap = expert.numel() == 0 ? 0 : one_hot.sum(0).max().item<int64_t>();
  if (capacity) *capacity = cap;
  auto flat = expert * cap + slot;  // [A]: row in the [E * capacity] buffer
  // 2. Scatter the routed rows into the zero-padded [E, capacity, d] buffer.
  auto rows = x.index_select(0, routing.token_index);  // [A, d]
  auto buffer = torch::zeros({experts * cap, d}, x.options())
                    .index_copy(0, flat, rows)
                    .view({experts, cap, d});
  // 3. One batched matmul per projection over the padded buffer.
  auto a = project(buffer, w.w1, w.b1);  // [E, C, h]
  auto g = activation == Activation::kSwiGLU ? project(buffer, w.w3, w.b3) : torch::Tensor();
  auto y = project(padded_activate(a, g, activation), w.w2, w.b2);  // [E, C, d]
  // 4. Gather the real rows back and combine them weighted by the gate.
  auto back = y.view({experts * cap, d}).index_select(0, flat);  // [A, d]
  auto weight = routing.weight.to(back.scalar_type()).unsqueeze(1);
  return torch::zeros({x.size(0), d}, x.options()).index_add(0, routing.token_index, back * weight);
}

PaddedMoEOutput padded_moe_forward(MoEImpl& moe, const torch::Tensor& x) {
  TORCH_CHECK(!moe.is_distributed(), "padded MoE: expected a single-process layer");
  TORCH_CHECK(moe.grouped, "padded MoE: expected the built-in grouped experts, got user modules");
  TORCH_CHECK(!moe.shared_expert,
              "padded MoE: expected no shared expert, got shared_expert_hidden=",
              moe.options.shared_expert_hidden());
  TORCH_CHECK(x.dim() == 2 && x.size(1) == moe.options.d_model(),
              "padded MoE: expected x as [tokens, d_model=", moe.options.d_model(), "], got ",
              x.sizes());
  RouterOutput routing = moe.gate->route(x);
  PaddedMoEOutput out;
  out.output = padded_experts_combine(x, routing, moe.grouped->weights(), moe.options.activation(),
                                      &out.capacity);
  out.aux_loss = (routing.aux_loss + routing.z_loss).to(x.scalar_type());
  return out;
}

}  // namespace hybridmoe::bench
