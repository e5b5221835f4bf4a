// collectives.cpp — the collectives of collectives.h on the comm core (work.h): the raw
// operations, the autograd pairs built on them, the asynchronous and point-to-point operations,
// the control collectives and the coalesced helpers.
#include "hybridmoe/collectives.h"

#include <algorithm>
#include <map>
#include <numeric>

#include "parallel/comm/work.h"

namespace hybridmoe::dist {
namespace {

using detail::run_work;
using detail::WorkSpec;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// ---- plumbing ---------------------------------------------------------------------------------

using detail::check_splits;

/// x's sizes with the first (rows) replaced.
std::vector<int64_t> with_rows(const torch::Tensor& x, int64_t rows) {
  auto sizes = x.sizes().vec();
  sizes[0] = rows;
  return sizes;
}

int64_t sum(const std::vector<int64_t>& v) {
  return std::accumulate(v.begin(), v.end(), int64_t{0});
}

int64_t bytes_of(const torch::Tensor& t) {
  return t.numel() * static_cast<int64_t>(t.element_size());
}

using detail::pack;
using detail::unpack;

// ---- raw operations (no autograd) -------------------------------------------------------------

PendingWork start_all_to_all(const char* op, const torch::Tensor& x,
                             std::vector<int64_t> output_splits, std::vector<int64_t> input_splits,
                             const Group& g, Taping taping) {
  TORCH_CHECK(x.defined() && x.dim() >= 1, op, ": expected a tensor [rows, ...], got ",
              x.defined() ? x.sizes() : c10::IntArrayRef{});
  TORCH_CHECK(g.is_member(), op, ": this process is not a member of group '", g.name, "'");
  check_splits(op, "output_splits", output_splits, g);
  check_splits(op, "input_splits", input_splits, g);
  TORCH_CHECK(sum(input_splits) == x.size(0), op, ": input_splits should sum to the ", x.size(0),
              " rows of x, got ", sum(input_splits));
  if (g.size() == 1) {
    TORCH_CHECK(output_splits[0] == input_splits[0], op,
                ": in a group of one, output_splits should equal input_splits, got ",
                output_splits[0], " and ", input_splits[0]);
    return PendingWork::ready(x.contiguous());
  }
  torch::Tensor in = x.contiguous();
  torch::Tensor out = torch::empty(with_rows(x, sum(output_splits)), x.options());
  const int64_t row_bytes = x.size(0) > 0 ? bytes_of(in) / x.size(0) : 0;
  WorkSpec spec{op, "", (sum(input_splits) - input_splits[g.rank]) * row_bytes, taping};
  return detail::start_work(spec, g, out, {in}, [=](c10d::ProcessGroup& pg) mutable {
    auto out_w = detail::movable(out), in_w = detail::movable(in);
    return pg.alltoall_base(out_w, in_w, output_splits, input_splits);
  });
}

torch::Tensor raw_all_to_all(const char* op, const torch::Tensor& x,
                             const std::vector<int64_t>& output_splits,
                             const std::vector<int64_t>& input_splits, const Group& g,
                             Taping taping) {
  return start_all_to_all(op, x, output_splits, input_splits, g, taping).wait();
}

torch::Tensor raw_reduce_scatter_rows(const torch::Tensor& x, const std::vector<int64_t>& counts,
                                      const Group& g, Taping taping) {
  if (g.size() == 1) return x;
  const int64_t mine = counts[g.rank];
  // Rank j's block goes to rank j; each rank then sums the P copies of its own block.
  torch::Tensor received = raw_all_to_all("reduce_scatter_rows", x,
                                          std::vector<int64_t>(g.size(), mine), counts, g, taping);
  auto sizes = x.sizes().vec();
  sizes[0] = mine;
  sizes.insert(sizes.begin(), g.size());
  return received.view(sizes).sum(0);
}

// Sums `buf` (contiguous, owned by the caller) over the group in place; returns the sum.
// 16-bit floats that Gloo cannot add travel in float32 and are rounded back once.
torch::Tensor all_reduce_owned(const char* op, torch::Tensor buf, const Group& g, Taping taping) {
  const bool widen = detail::reduces_in_float32(buf);
  torch::Tensor wire = widen ? buf.to(torch::kFloat32) : buf;
  WorkSpec spec{op, "", bytes_of(wire), taping};
  auto sum = run_work(spec, g, wire, {}, [&](c10d::ProcessGroup& pg) {
    std::vector<torch::Tensor> tensors = {wire};
    return pg.allreduce(tensors);
  });
  return widen ? buf.copy_(sum) : sum;
}

torch::Tensor raw_all_reduce(const char* op, const torch::Tensor& x, const Group& g,
                             Taping taping) {
  if (g.size() == 1) return x;
  return all_reduce_owned(op, x.clone(at::MemoryFormat::Contiguous), g, taping);
}

std::vector<int64_t> resolve_gather_counts(const torch::Tensor& x, const Group& g,
                                           const std::vector<int64_t>& rows_per_rank) {
  TORCH_CHECK(x.defined() && x.dim() >= 1, "all_gather_rows: expected a tensor [rows, ...]");
  TORCH_CHECK(g.is_member(), "all_gather_rows: this process is not a member of group '", g.name,
              "'");
  if (rows_per_rank.empty()) return all_gather_counts(x.size(0), g);
  check_splits("all_gather_rows", "rows_per_rank", rows_per_rank, g);
  TORCH_CHECK(rows_per_rank[g.rank] == x.size(0), "all_gather_rows: rows_per_rank[", g.rank,
              "] should be this rank's ", x.size(0), " rows, got ", rows_per_rank[g.rank]);
  return rows_per_rank;
}

std::vector<int64_t> resolve_scatter_counts(const torch::Tensor& x, const Group& g,
                                            const std::vector<int64_t>& rows_per_rank) {
  TORCH_CHECK(x.defined() && x.dim() >= 1, "reduce_scatter_rows: expected a tensor [rows, ...]");
  TORCH_CHECK(g.is_member(), "reduce_scatter_rows: this process is not a member of group '", g.name,
              "'");
  if (rows_per_rank.empty()) return even_split(x.size(0), g.size());
  check_splits("reduce_scatter_rows", "rows_per_rank", rows_per_rank, g);
  TORCH_CHECK(sum(rows_per_rank) == x.size(0), "reduce_scatter_rows: rows_per_rank should sum to ",
              "the ", x.size(0), " rows of x, got ", sum(rows_per_rank));
  return rows_per_rank;
}

// ---- autograd functions -----------------------------------------------------------------------

struct AllToAllFn : torch::autograd::Function<AllToAllFn> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x,
                               const std::vector<int64_t>& output_splits,
                               const std::vector<int64_t>& input_splits, const Group& g) {
    ctx->saved_data["out"] = output_splits;
    ctx->saved_data["in"] = input_splits;
    ctx->saved_data["group"] = pack(g);
    return raw_all_to_all("all_to_all", x, output_splits, input_splits, g, Taping::kForward);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    // The gradient of each received row goes back to the rank and row it came from.
    auto dx = raw_all_to_all("all_to_all(backward)", grads[0], ctx->saved_data["in"].toIntVector(),
                             ctx->saved_data["out"].toIntVector(), unpack(ctx->saved_data["group"]),
                             Taping::kNever);
    return {dx, torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

struct AllGatherRowsFn : torch::autograd::Function<AllGatherRowsFn> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x,
                               const std::vector<int64_t>& counts, const Group& g) {
    ctx->saved_data["counts"] = counts;
    ctx->saved_data["group"] = pack(g);
    return detail::all_gather_rows_raw("all_gather_rows", x, counts, g, Taping::kForward);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto dx =
        raw_reduce_scatter_rows(grads[0].contiguous(), ctx->saved_data["counts"].toIntVector(),
                                unpack(ctx->saved_data["group"]), Taping::kNever);
    return {dx, torch::Tensor(), torch::Tensor()};
  }
};

struct ReduceScatterRowsFn : torch::autograd::Function<ReduceScatterRowsFn> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x,
                               const std::vector<int64_t>& counts, const Group& g) {
    ctx->saved_data["counts"] = counts;
    ctx->saved_data["group"] = pack(g);
    return raw_reduce_scatter_rows(x, counts, g, Taping::kForward);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto dx = detail::all_gather_rows_raw("all_gather_rows", grads[0],
                                          ctx->saved_data["counts"].toIntVector(),
                                          unpack(ctx->saved_data["group"]), Taping::kNever);
    return {dx, torch::Tensor(), torch::Tensor()};
  }
};

struct AllReduceSumFn : torch::autograd::Function<AllReduceSumFn> {
  static torch::Tensor forward(AutogradContext* /*ctx*/, const torch::Tensor& x, const Group& g) {
    return raw_all_reduce("all_reduce_sum", x, g, Taping::kForward);
  }
  static variable_list backward(AutogradContext* /*ctx*/, variable_list grads) {
    return {grads[0], torch::Tensor()};
  }
};

struct CopyToGroupFn : torch::autograd::Function<CopyToGroupFn> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const Group& g) {
    ctx->saved_data["group"] = pack(g);
    return x;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {raw_all_reduce("copy_to_group(backward)", grads[0], unpack(ctx->saved_data["group"]),
                           Taping::kNever),
            torch::Tensor()};
  }
};

// ---- coalescing -------------------------------------------------------------------------------

/// Calls `flush(indices)` on buckets of tensors of one dtype and device, each at most
/// bucket_bytes (or one tensor), in an order that is the same on every rank.
template <typename Flush>
void for_each_bucket(const std::vector<torch::Tensor>& tensors, int64_t bucket_bytes,
                     Flush&& flush) {
  struct Bucket {
    std::vector<size_t> indices;
    int64_t bytes = 0;
  };
  std::map<std::pair<int, std::string>, Bucket> open;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& t = tensors[i];
    if (!t.defined()) continue;
    TORCH_CHECK(t.layout() == torch::kStrided, "coalesced collectives take dense tensors, got ",
                t.layout(), " at index ", i);
    auto key = std::make_pair(static_cast<int>(t.scalar_type()), t.device().str());
    Bucket& b = open[key];
    const int64_t bytes = t.numel() * static_cast<int64_t>(t.element_size());
    if (!b.indices.empty() && b.bytes + bytes > bucket_bytes) {
      flush(b.indices);
      b = Bucket();
    }
    b.indices.push_back(i);
    b.bytes += bytes;
  }
  for (auto& [key, b] : open) {
    if (!b.indices.empty()) flush(b.indices);
  }
}

torch::Tensor flatten(const std::vector<torch::Tensor>& tensors, const std::vector<size_t>& idx) {
  std::vector<torch::Tensor> flat;
  for (size_t i : idx) flat.push_back(tensors[i].reshape(-1));
  return torch::cat(flat);
}

void unflatten_into(std::vector<torch::Tensor>& tensors, const std::vector<size_t>& idx,
                    const torch::Tensor& flat) {
  int64_t offset = 0;
  for (size_t i : idx) {
    const int64_t n = tensors[i].numel();
    tensors[i].copy_(flat.narrow(0, offset, n).view(tensors[i].sizes()));
    offset += n;
  }
}

}  // namespace

// ---- public API -------------------------------------------------------------------------------

torch::Tensor all_to_all(const torch::Tensor& x, const std::vector<int64_t>& output_splits,
                         const std::vector<int64_t>& input_splits, const Group& group) {
  return AllToAllFn::apply(x, output_splits, input_splits, group);
}

torch::Tensor all_gather_rows(const torch::Tensor& x, const Group& group,
                              const std::vector<int64_t>& rows_per_rank) {
  const auto counts = resolve_gather_counts(x, group, rows_per_rank);
  return AllGatherRowsFn::apply(x, counts, group);
}

torch::Tensor reduce_scatter_rows(const torch::Tensor& x, const Group& group,
                                  const std::vector<int64_t>& rows_per_rank) {
  const auto counts = resolve_scatter_counts(x, group, rows_per_rank);
  return ReduceScatterRowsFn::apply(x, counts, group);
}

torch::Tensor all_reduce_sum(const torch::Tensor& x, const Group& group) {
  TORCH_CHECK(x.defined(), "all_reduce_sum: expected a defined tensor");
  return AllReduceSumFn::apply(x, group);
}

torch::Tensor copy_to_group(const torch::Tensor& x, const Group& group) {
  TORCH_CHECK(x.defined(), "copy_to_group: expected a defined tensor");
  return CopyToGroupFn::apply(x, group);
}

std::vector<int64_t> even_split(int64_t n, int64_t p) {
  TORCH_CHECK(n >= 0 && p >= 1, "even_split: expected n >= 0 and p >= 1, got ", n, " and ", p);
  std::vector<int64_t> out(p, n / p);
  for (int64_t j = 0; j < n % p; ++j) ++out[j];
  return out;
}

std::vector<int64_t> exchange_counts(const std::vector<int64_t>& send_counts, const Group& group) {
  TORCH_CHECK(group.is_member(), "exchange_counts: not a member of group '", group.name, "'");
  TORCH_CHECK(!send_counts.empty() && send_counts.size() % group.size() == 0,
              "exchange_counts: expected a multiple of the group size ", group.size(),
              " of counts, got ", send_counts.size());
  if (group.size() == 1) return send_counts;
  auto sent = torch::tensor(send_counts, torch::kInt64).to(detail::control_device(group));
  auto received = exchange_counts(sent, group).cpu();
  return std::vector<int64_t>(received.data_ptr<int64_t>(),
                              received.data_ptr<int64_t>() + received.numel());
}

torch::Tensor exchange_counts(const torch::Tensor& counts, const Group& group) {
  TORCH_CHECK(counts.dim() == 1 && counts.scalar_type() == torch::kInt64,
              "exchange_counts: expected counts [P * k] int64, got ", counts.sizes(), " ",
              counts.scalar_type());
  TORCH_CHECK(counts.numel() % group.size() == 0, "exchange_counts: ", counts.numel(),
              " counts are not a multiple of the group size ", group.size());
  std::vector<int64_t> splits(group.size(), counts.numel() / group.size());
  return raw_all_to_all("exchange_counts", counts, splits, splits, group, Taping::kForward);
}

std::vector<std::vector<int64_t>> all_gather_counts(const std::vector<int64_t>& values,
                                                    const Group& group) {
  TORCH_CHECK(group.is_member(), "all_gather_counts: not a member of group '", group.name, "'");
  if (group.size() == 1) return {values};
  const int64_t k = static_cast<int64_t>(values.size());
  auto mine = torch::tensor(values, torch::kInt64).to(detail::control_device(group));
  torch::Tensor all;
  if (k > 0) {
    auto out = torch::empty({group.size(), k}, mine.options());
    WorkSpec spec{"all_gather_counts", "", k * 8 * (group.size() - 1), Taping::kForward};
    all = run_work(spec, group, out, {mine}, [&](c10d::ProcessGroup& pg) {
            std::vector<std::vector<torch::Tensor>> outputs(1);
            for (int64_t j = 0; j < group.size(); ++j) outputs[0].push_back(out[j]);
            std::vector<torch::Tensor> inputs = {mine};
            return pg.allgather(outputs, inputs);
          }).cpu();
  }
  std::vector<std::vector<int64_t>> result(group.size());
  for (int64_t j = 0; j < group.size(); ++j)
    if (k > 0) result[j].assign(all[j].data_ptr<int64_t>(), all[j].data_ptr<int64_t>() + k);
  return result;
}

std::vector<int64_t> all_gather_counts(int64_t n, const Group& group) {
  std::vector<int64_t> out;
  for (const auto& v : all_gather_counts(std::vector<int64_t>{n}, group)) out.push_back(v[0]);
  return out;
}

void all_reduce_coalesced_(std::vector<torch::Tensor>& tensors, const Group& group,
                           const CoalesceOptions& options) {
  TORCH_CHECK(group.is_member(), "all_reduce_coalesced_: not a member of group '", group.name, "'");
  TORCH_CHECK(options.bucket_bytes > 0, "bucket_bytes should be > 0, got ", options.bucket_bytes);
  if (group.size() == 1) return;
  torch::NoGradGuard no_grad;
  for_each_bucket(tensors, options.bucket_bytes, [&](const std::vector<size_t>& idx) {
    auto flat =
        all_reduce_owned("all_reduce_coalesced_", flatten(tensors, idx), group, Taping::kNever);
    if (options.average) flat.div_(static_cast<double>(group.size()));
    unflatten_into(tensors, idx, flat);
  });
}

void broadcast_(std::vector<torch::Tensor>& tensors, int64_t root, const Group& group,
                const CoalesceOptions& options) {
  TORCH_CHECK(group.is_member(), "broadcast_: not a member of group '", group.name, "'");
  TORCH_CHECK(root >= 0 && root < group.size(), "broadcast_: root should be a group rank in [0, ",
              group.size(), "), got ", root);
  if (group.size() == 1) return;
  torch::NoGradGuard no_grad;
  for_each_bucket(tensors, options.bucket_bytes, [&](const std::vector<size_t>& idx) {
    torch::Tensor flat = flatten(tensors, idx);
    const int64_t sent = group.rank == root ? bytes_of(flat) * (group.size() - 1) : 0;
    run_work({"broadcast_", "", sent, Taping::kNever}, group, flat, {},
             [&](c10d::ProcessGroup& pg) {
               std::vector<torch::Tensor> buf = {detail::movable(flat)};
               c10d::BroadcastOptions opts;
               opts.rootRank = root;
               return pg.broadcast(buf, opts);
             });
    if (group.rank != root) unflatten_into(tensors, idx, flat);
  });
}

void barrier(const Group& group) {
  TORCH_CHECK(group.is_member(), "barrier: not a member of group '", group.name, "'");
  if (group.size() == 1) return;
  auto one =
      torch::zeros({1}, torch::TensorOptions(torch::kInt32).device(detail::control_device(group)));
  run_work({"barrier", "", 4, Taping::kNever}, group, one, {}, [&](c10d::ProcessGroup& pg) {
    std::vector<torch::Tensor> buf = {one};
    return pg.allreduce(buf);
  });
}

namespace detail {

torch::Tensor all_gather_rows_raw(const char* op, const torch::Tensor& x,
                                  const std::vector<int64_t>& counts, const Group& g,
                                  Taping taping) {
  if (g.size() == 1) return x;
  const int64_t most = *std::max_element(counts.begin(), counts.end());
  if (most == 0) return torch::empty(with_rows(x, 0), x.options());  // every rank knows: skip
  // 1. Pad this rank's rows to the largest count, 2. all-gather, 3. drop the padding.
  torch::Tensor in =
      x.size(0) == most
          ? x.contiguous()
          : torch::cat({x, torch::zeros(with_rows(x, most - x.size(0)), x.options())});
  auto sizes = in.sizes().vec();
  sizes.insert(sizes.begin(), g.size());
  torch::Tensor out = torch::empty(sizes, x.options());  // [P, most, ...]
  WorkSpec spec{op, "", bytes_of(x) * (g.size() - 1), taping};
  return run_work(
      spec, g, out, {in},
      [&](c10d::ProcessGroup& pg) {
        std::vector<std::vector<torch::Tensor>> outputs(1);
        for (int64_t j = 0; j < g.size(); ++j) outputs[0].push_back(detail::movable(out[j]));
        std::vector<torch::Tensor> inputs = {detail::movable(in)};
        return pg.allgather(outputs, inputs);
      },
      [&](const torch::Tensor& gathered) {
        std::vector<torch::Tensor> parts;
        for (int64_t j = 0; j < g.size(); ++j) parts.push_back(gathered[j].narrow(0, 0, counts[j]));
        return torch::cat(parts);
      });
}

}  // namespace detail

// ---- asynchronous and point-to-point ------------------------------------------------------------

PendingWork all_to_all_async(const char* op, const torch::Tensor& x,
                             const std::vector<int64_t>& output_splits,
                             const std::vector<int64_t>& input_splits, const Group& group,
                             Taping taping) {
  return start_all_to_all(op, x, output_splits, input_splits, group, taping);
}

namespace {

void check_peer(const Group& g, const char* op, int64_t peer) {
  TORCH_CHECK(g.is_member(), op, ": this process is not a member of group '", g.name, "'");
  TORCH_CHECK(peer >= 0 && peer < g.size() && peer != g.rank, op, ": peer ", peer,
              " is not another rank of group '", g.name, "' (size ", g.size(), ")");
}

std::string peer_text(int64_t peer, int64_t tag) {
  return "peer " + std::to_string(peer) + ", tag " + std::to_string(tag);
}

}  // namespace

PendingWork send_async(const torch::Tensor& x, int64_t peer, int64_t tag, const Group& group) {
  check_peer(group, "p2p_send", peer);
  torch::Tensor buf = x.detach().contiguous();
  WorkSpec spec{"p2p_send", peer_text(peer, tag), bytes_of(buf), Taping::kNever};
  auto work = detail::start_work(spec, group, buf, {}, [&](c10d::ProcessGroup& pg) {
    std::vector<torch::Tensor> tensors = {detail::movable(buf)};
    return pg.send(tensors, static_cast<int>(peer), static_cast<int>(tag));
  });
  return work;
}

torch::Tensor recv(c10::IntArrayRef sizes, const torch::TensorOptions& options, int64_t peer,
                   int64_t tag, const Group& group) {
  check_peer(group, "p2p_recv", peer);
  torch::Tensor buf = torch::empty(sizes, options);
  WorkSpec spec{"p2p_recv", peer_text(peer, tag), 0, Taping::kNever};
  return run_work(spec, group, buf, {}, [&](c10d::ProcessGroup& pg) {
    std::vector<torch::Tensor> tensors = {detail::movable(buf)};
    return pg.recv(tensors, static_cast<int>(peer), static_cast<int>(tag));
  });
}

}  // namespace hybridmoe::dist
