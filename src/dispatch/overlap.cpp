// overlap.cpp — see overlap.h: the chunked, pipelined exchange + grouped experts as one autograd
// function (forward and mirrored backward), on the comm core's asynchronous all-to-all.
#include "hybridmoe/detail/overlap.h"

#include <memory>
#include <numeric>

#include "experts/grouped_mlp.h"
#include "hybridmoe/collectives.h"

namespace hybridmoe {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

namespace {

int64_t total(const std::vector<int64_t>& v) {
  return std::accumulate(v.begin(), v.end(), int64_t{0});
}

// ---- the chunk plan ---------------------------------------------------------------------------

// One chunk's exchange: what leaves this rank (source side) and what arrives (expert side). With
// etp > 1 the expert side is the chunk's rows of the whole etp group: every etp rank's received
// chunk, all-gathered in etp rank order, each in its receive order.
struct Chunk {
  torch::Tensor send_index;  // [A_c] rows of `rows` sent in this chunk, in send order
  torch::Tensor recv_to_em;  // [G_c] gathered row of each expert-major row
  torch::Tensor em_to_recv;  // [G_c] the inverse
  torch::Tensor full_pos;    // [G_c] row of each expert-major chunk row in the unchunked order
  std::vector<int64_t> send_splits, recv_splits, counts;  // counts: [L] rows per local expert
  std::vector<int64_t> gather_splits;                     // [etp] received rows of each etp rank
};

struct OverlapPlan : torch::CustomClassHolder {
  dist::Group group;  // ep
  dist::Group etp;    // the expert's hidden dimension is split over it (size 1: not split)
  std::vector<Chunk> chunks;
  torch::Tensor src_inverse;         // [A] row of cat(returned chunks) of each row of `rows`
  std::vector<int64_t> full_counts;  // [L] rows per local expert over the etp group, unchunked
  int64_t full_rows = 0;             // R: rows of the etp group, unchunked
  Activation activation = Activation::kGelu;

  // With etp > 1, the etp group's rows of chunk c from this rank's received rows, and back
  // (the partial outputs of every etp rank summed into this rank's rows). Otherwise identity.
  torch::Tensor gather(const torch::Tensor& received, int64_t c) const {
    return etp.size() > 1 ? dist::all_gather_rows(received, etp, chunks[c].gather_splits)
                          : received;
  }
  torch::Tensor scatter(const torch::Tensor& partial, int64_t c) const {
    return etp.size() > 1 ? dist::reduce_scatter_rows(partial, etp, chunks[c].gather_splits)
                          : partial;
  }
};

// counts: [P * L] rows of `rows` per destination slot; recv_counts: [P * L] rows this rank
// receives from ep rank j for local expert e at j * L + e.
c10::intrusive_ptr<OverlapPlan> make_overlap_plan(const std::vector<int64_t>& counts,
                                                  const std::vector<int64_t>& recv_counts,
                                                  int64_t L, const dist::Group& ep,
                                                  const dist::Group& etp, int64_t D,
                                                  const torch::Device& device) {
  auto plan = c10::make_intrusive<OverlapPlan>();
  plan->group = ep;
  plan->etp = etp;
  const int64_t P = ep.size(), E = P * L;
  const int64_t Q = std::max<int64_t>(1, etp.size()), me = Q > 1 ? etp.rank : 0;
  TORCH_CHECK(
      static_cast<int64_t>(counts.size()) == E && static_cast<int64_t>(recv_counts.size()) == E,
      "overlapped_expert_exchange: ", counts.size(), " send and ", recv_counts.size(),
      " receive counts for ", E, " experts");
  // 1. What every etp rank receives: recv[q][j * L + e] rows from ep rank j for local expert e.
  const std::vector<std::vector<int64_t>> recv =
      Q > 1 ? dist::all_gather_counts(recv_counts, etp)
            : std::vector<std::vector<int64_t>>{recv_counts};
  // 2. Unchunked expert-major start of each (local expert, etp rank, ep source) run: the order
  //    of the unchunked layer (expert e, then etp rank q's rows of e, each ordered by source).
  std::vector<std::vector<std::vector<int64_t>>> start(
      L, std::vector<std::vector<int64_t>>(Q, std::vector<int64_t>(P, 0)));
  plan->full_counts.assign(L, 0);
  int64_t offset = 0;
  for (int64_t e = 0; e < L; ++e)
    for (int64_t q = 0; q < Q; ++q)
      for (int64_t j = 0; j < P; ++j) {
        start[e][q][j] = offset;
        offset += recv[q][j * L + e];
        plan->full_counts[e] += recv[q][j * L + e];
      }
  plan->full_rows = offset;
  // 3. Each chunk: the c-th part of every (source, expert) run, on both sides.
  std::vector<int64_t> src_offset(E + 1, 0);
  for (int64_t g = 0; g < E; ++g) src_offset[g + 1] = src_offset[g] + counts[g];
  auto part = [D](int64_t n, int64_t c) {  // (first, size) of part c of n rows
    const auto sp = dist::even_split(n, D);
    return std::make_pair(std::accumulate(sp.begin(), sp.begin() + c, int64_t{0}), sp[c]);
  };
  std::vector<int64_t> all_sent;
  for (int64_t c = 0; c < D; ++c) {
    Chunk ch;
    ch.send_splits.assign(P, 0);
    ch.recv_splits.assign(P, 0);
    std::vector<int64_t> send_index;
    for (int64_t g = 0; g < E; ++g) {
      const auto [first, n] = part(counts[g], c);
      for (int64_t a = 0; a < n; ++a) send_index.push_back(src_offset[g] + first + a);
      ch.send_splits[g / L] += n;
    }
    // The gathered chunk holds, for each etp rank q and ep source j (block q * P + j), the
    // chunk's part of every local expert's rows; this rank's own blocks are what it receives.
    std::vector<std::vector<int64_t>> blocks(Q * P, std::vector<int64_t>(L, 0));
    ch.gather_splits.assign(Q, 0);
    for (int64_t q = 0; q < Q; ++q)
      for (int64_t j = 0; j < P; ++j)
        for (int64_t e = 0; e < L; ++e) {
          blocks[q * P + j][e] = part(recv[q][j * L + e], c).second;
          ch.gather_splits[q] += blocks[q * P + j][e];
          if (q == me) ch.recv_splits[j] += blocks[q * P + j][e];
        }
    auto order = expert_major_index(blocks);
    std::vector<int64_t> full_pos;
    for (int64_t e = 0; e < L; ++e)
      for (int64_t q = 0; q < Q; ++q)
        for (int64_t j = 0; j < P; ++j) {
          const auto [first, n] = part(recv[q][j * L + e], c);
          for (int64_t t = 0; t < n; ++t) full_pos.push_back(start[e][q][j] + first + t);
        }
    ch.counts = order.per_expert;
    ch.recv_to_em = order.index.to(device);
    ch.em_to_recv = order.inverse.to(device);
    ch.full_pos = torch::tensor(full_pos, torch::kInt64).to(device);
    ch.send_index = torch::tensor(send_index, torch::kInt64).to(device);
    all_sent.insert(all_sent.end(), send_index.begin(), send_index.end());
    plan->chunks.push_back(std::move(ch));
  }
  // 3. The returned chunks, concatenated, back into the order of `rows`.
  std::vector<int64_t> inverse(all_sent.size());
  for (size_t i = 0; i < all_sent.size(); ++i) inverse[all_sent[i]] = static_cast<int64_t>(i);
  plan->src_inverse = torch::tensor(inverse, torch::kInt64).to(device);
  return plan;
}

// Runs `step(c, received)` on every chunk while the exchanges of the neighbours are in flight:
// send(c) is the chunk's outbound tensor, step returns what goes back. Returns the returned
// chunks in order. The forward pass's exchanges are taped (recompute), the backward's are not.
template <typename Send, typename Step>
std::vector<torch::Tensor> pipeline(const OverlapPlan& plan, dist::Taping taping, Send&& send,
                                    Step&& step) {
  const char* forward_op = "overlap_all_to_all";
  const char* back_op = "overlap_all_to_all(back)";
  const int64_t D = static_cast<int64_t>(plan.chunks.size());
  std::vector<dist::PendingWork> out(D), back(D);
  auto start_out = [&](int64_t c) {
    const auto& ch = plan.chunks[c];
    out[c] = dist::all_to_all_async(forward_op, send(c), ch.recv_splits, ch.send_splits, plan.group,
                                    taping);
  };
  // 1. Chunk 0 leaves; then for each chunk: start the next one, wait for this one, compute it,
  //    start its return, and collect the previous chunk's return.
  start_out(0);
  std::vector<torch::Tensor> returned(D);
  for (int64_t c = 0; c < D; ++c) {
    if (c + 1 < D) start_out(c + 1);
    auto received = out[c].wait();
    auto result = step(c, received);
    const auto& ch = plan.chunks[c];
    back[c] =
        dist::all_to_all_async(back_op, result, ch.send_splits, ch.recv_splits, plan.group, taping);
    if (c > 0) returned[c - 1] = back[c - 1].wait();
  }
  // 2. The last return.
  returned[D - 1] = back[D - 1].wait();
  return returned;
}

// ---- the autograd function --------------------------------------------------------------------

using Opt = detail::OptTensor;
using detail::value_of;

// The chunked exchange and the grouped MLP of grouped_mlp.h (the same forward and backward
// pieces, run chunk by chunk between the exchanges).
struct OverlappedExpertsFn : torch::autograd::Function<OverlappedExpertsFn> {
  // rows: [A, d] → [A, d]; weights as GroupedExperts (w1 [L, d, h], w2 [L, h, d], ...).
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& rows,
                               const torch::Tensor& w1, const Opt& b1, const torch::Tensor& w2,
                               const Opt& b2, const Opt& w3, const Opt& b3,
                               c10::intrusive_ptr<OverlapPlan> plan) {
    const ExpertWeights w{w1, value_of(b1), w2, value_of(b2), value_of(w3), value_of(b3)};
    const auto act = plan->activation;
    const int64_t R = plan->full_rows, d = rows.size(1), h = w1.size(2);
    // What the backward needs, kept in the unchunked expert-major order.
    auto x_full = torch::empty({R, d}, rows.options());
    auto a_full = torch::empty({R, h}, rows.options());
    auto hidden_full = torch::empty({R, h}, rows.options());
    auto g_full =
        act == Activation::kSwiGLU ? torch::empty({R, h}, rows.options()) : torch::Tensor();
    auto returned = pipeline(
        *plan, dist::Taping::kForward,
        [&](int64_t c) { return rows.index_select(0, plan->chunks[c].send_index); },
        [&](int64_t c, const torch::Tensor& received) {
          const auto& ch = plan->chunks[c];
          // The experts on chunk c (of the whole etp group).
          auto x = plan->gather(received, c).index_select(0, ch.recv_to_em);
          detail::MlpActivations keep;
          auto y = detail::mlp_forward(x, w, ch.counts, act, &keep);
          x_full.index_copy_(0, ch.full_pos, x);
          a_full.index_copy_(0, ch.full_pos, keep.a);
          hidden_full.index_copy_(0, ch.full_pos, keep.hidden);
          if (keep.g.defined()) g_full.index_copy_(0, ch.full_pos, keep.g);
          return plan->scatter(y.index_select(0, ch.em_to_recv), c);
        });
    ctx->save_for_backward(detail::saved_list(x_full, {a_full, g_full, hidden_full}, w));
    ctx->saved_data["plan"] = c10::IValue::make_capsule(plan);
    return torch::cat(returned).index_select(0, plan->src_inverse);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const detail::MlpSaved s = detail::saved_from(ctx->get_saved_variables());
    const auto& a = s.keep.a;
    const auto& w = s.w;
    auto* plan = static_cast<OverlapPlan*>(ctx->saved_data["plan"].toCapsule().get());
    const auto act = plan->activation;
    const bool swiglu = act == Activation::kSwiGLU;
    auto dy_src = grads[0].contiguous();
    const int64_t R = plan->full_rows, d = s.x.size(1), h = w.w1.size(2);
    auto dy_full = torch::empty({R, d}, dy_src.options());
    auto da_full = torch::empty({R, h}, dy_src.options());
    auto dg_full = swiglu ? torch::empty({R, h}, dy_src.options()) : torch::Tensor();
    // 1. The mirrored pipeline: output gradients out, input gradients back, chunk by chunk.
    auto returned = pipeline(
        *plan, dist::Taping::kNever,
        [&](int64_t c) { return dy_src.index_select(0, plan->chunks[c].send_index); },
        [&](int64_t c, const torch::Tensor& received) {
          const auto& ch = plan->chunks[c];
          auto dy = plan->gather(received, c).index_select(0, ch.recv_to_em);
          auto g_c = swiglu ? s.keep.g.index_select(0, ch.full_pos) : torch::Tensor();
          torch::Tensor da, dg;
          auto dx = detail::mlp_backward_input(dy, a.index_select(0, ch.full_pos), g_c, w,
                                               ch.counts, act, &da, &dg);
          dy_full.index_copy_(0, ch.full_pos, dy);
          da_full.index_copy_(0, ch.full_pos, da);
          if (swiglu) dg_full.index_copy_(0, ch.full_pos, dg);
          return plan->scatter(dx.index_select(0, ch.em_to_recv), c);
        });
    auto drows = torch::cat(returned).index_select(0, plan->src_inverse);
    // 2. Weight gradients once, over all rows in the unchunked order.
    const ExpertWeights dw = detail::mlp_backward_weights(s.x, s.keep.hidden, dy_full, da_full,
                                                          dg_full, plan->full_counts, w);
    return {drows, dw.w1, dw.b1, dw.w2, dw.b2, dw.w3, dw.b3, torch::Tensor()};
  }
};

}  // namespace

torch::Tensor overlapped_expert_exchange(const torch::Tensor& rows,
                                         const std::vector<int64_t>& counts,
                                         const std::vector<int64_t>& recv_counts,
                                         const dist::Group& ep, const dist::Group& etp,
                                         const ExpertWeights& w, Activation activation,
                                         int64_t degree) {
  TORCH_CHECK(degree >= 1, "overlapped_expert_exchange: degree must be >= 1, got ", degree);
  TORCH_CHECK(rows.dim() == 2 && rows.size(0) == total(counts),
              "overlapped_expert_exchange: rows must be [", total(counts), ", d], got ",
              rows.sizes());
  TORCH_CHECK(w.w1.defined() && w.w2.defined() && w.w1.dim() == 3,
              "overlapped_expert_exchange: w1 must be [local experts, d, h], got ",
              w.w1.defined() ? w.w1.sizes() : c10::IntArrayRef{});
  TORCH_CHECK(activation != Activation::kSwiGLU || w.w3.defined(),
              "overlapped_expert_exchange: SwiGLU needs w3");
  auto plan = make_overlap_plan(counts, recv_counts, w.w1.size(0), ep, etp, degree, rows.device());
  plan->activation = activation;
  auto opt = detail::optional_of;
  return OverlappedExpertsFn::apply(rows, w.w1, opt(w.b1), w.w2, opt(w.b2), opt(w.w3), opt(w.b3),
                                    plan);
}

}  // namespace hybridmoe
