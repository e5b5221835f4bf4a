// zero_optimizer.cpp — ZeroAdamW (zero.h): building the spaces and shards, reducing gradients
// into the owners' shards, the exact global gradient norm and clipping under sharding, and the
// step with its parameter all-gather. The update itself is in zero_step.cpp, the state's save and
// load in zero_state.cpp.
#include <algorithm>
#include <cmath>
#include <set>

#include "hybridmoe/collectives.h"
#include "optim/zero_space.h"

namespace hybridmoe {

using zero_detail::Bucket;
using zero_detail::flat_grad;
using zero_detail::flat_value;
using zero_detail::Param;
using zero_detail::Piece;
using zero_detail::Space;

namespace {

std::string dtype_name(torch::ScalarType t) {
  std::string s = c10::toString(t);  // "Float", "BFloat16", ...
  if (t == torch::kFloat32) return "float32";
  if (t == torch::kFloat64) return "float64";
  if (t == torch::kBFloat16) return "bfloat16";
  if (t == torch::kFloat16) return "float16";
  return s;
}

/// Calls fn(param index, offset in the parameter, length, offset in [a, b)) for every run of the
/// space's flat range [a, b) that lies in one parameter.
template <typename Fn>
void for_each_run(const Space& s, const std::vector<Param>& params, int64_t a, int64_t b, Fn&& fn) {
  auto it = std::upper_bound(s.begin.begin(), s.begin.end(), a);
  size_t k = static_cast<size_t>(std::max<int64_t>(0, (it - s.begin.begin()) - 1));
  for (int64_t at = a; at < b && k < s.params.size(); ++k) {
    const int64_t p_begin = s.begin[k], p_end = p_begin + params[s.params[k]].tensor.numel();
    if (p_end <= at) continue;
    const int64_t n = std::min(b, p_end) - at;
    fn(s.params[k], at - p_begin, n, at - a);
    at += n;
  }
}

/// A group of one for untagged parameters.
dist::Group local_group(int64_t world_rank) {
  dist::Group g;
  g.name = "local";
  g.ranks = {world_rank};
  g.rank = 0;
  return g;
}

/// 1. The space's parameters laid end to end, 2. its buckets and owned pieces, 3. its state.
void build_space(Space& s, const std::vector<Param>& params, const ZeroAdamWOptions& o) {
  s.numel = 0;
  for (auto i : s.params) {
    s.begin.push_back(s.numel);
    s.numel += params[i].tensor.numel();
  }
  // The group's ranks must hold the same space (same shapes), or the collectives would not match.
  if (s.group.size() > 1) {
    const auto sizes = dist::all_gather_counts(s.numel, s.group);
    for (size_t r = 0; r < sizes.size(); ++r)
      TORCH_CHECK(sizes[r] == s.numel, "ZeroAdamW: the ", s.name, " parameters of group rank ", r,
                  " of group '", s.group.name, "' have ", sizes[r], " elements, this rank's have ",
                  s.numel,
                  " (the group's ranks must hold "
                  "same-shaped parameters)");
  }
  const int64_t elem = static_cast<int64_t>(c10::elementSize(s.dtype));
  s.bucket_elems = std::max<int64_t>(1, o.bucket_bytes() / elem);
  s.sharded = o.zero_stage() == 1 && s.group.size() > 1;
  if (s.sharded) {
    for (int64_t b = 0; b < s.numel; b += s.bucket_elems) {
      Bucket bk;
      bk.begin = b;
      bk.numel = std::min(s.bucket_elems, s.numel - b);
      bk.counts = dist::even_split(bk.numel, s.group.size());
      for (int64_t r = 0; r < s.group.rank; ++r) bk.my_offset += bk.counts[r];
      for_each_run(s, params, b + bk.my_offset, b + bk.my_offset + bk.counts[s.group.rank],
                   [&](int64_t p, int64_t off, int64_t n, int64_t) {
                     s.pieces.push_back({p, off, n, s.owned});
                     s.owned += n;
                   });
      s.buckets.push_back(std::move(bk));
    }
  } else {
    for (auto i : s.params) {
      const int64_t n = params[i].tensor.numel();
      if (n > 0) s.pieces.push_back({i, 0, n, s.owned});
      s.owned += n;
    }
  }
  s.compute = s.dtype == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  const auto device = params[s.params.front()].tensor.device();
  const auto opts = torch::TensorOptions().dtype(s.compute).device(device);
  s.exp_avg = torch::zeros({s.owned}, opts);
  s.exp_avg_sq = torch::zeros({s.owned}, opts);
  if (s.dtype != s.compute) {
    torch::NoGradGuard no_grad;
    s.master = torch::empty({s.owned}, opts);
    for (const auto& pc : s.pieces)
      s.master.narrow(0, pc.shard_offset, pc.length)
          .copy_(flat_value(params[pc.param]).narrow(0, pc.param_offset, pc.length));
  }
}

}  // namespace

ZeroAdamW::ZeroAdamW(const NamedTensors& params, const Tags& tags,
                     std::vector<ZeroParamGroup> param_groups,
                     std::shared_ptr<const ParallelGroups> groups, ZeroAdamWOptions options)
    : impl_(std::make_unique<Impl>()) {
  auto& m = *impl_;
  m.options = options;
  m.groups = std::move(groups);
  m.param_groups = std::move(param_groups);
  TORCH_CHECK(m.groups, "ZeroAdamW: the parallel groups are null");
  TORCH_CHECK(options.zero_stage() == 0 || options.zero_stage() == 1,
              "ZeroAdamW: zero_stage should be 0 or 1, got ", options.zero_stage());
  TORCH_CHECK(options.bucket_bytes() > 0, "ZeroAdamW: bucket_bytes should be > 0, got ",
              options.bucket_bytes());
  // 1. Every parameter in exactly one parameter group.
  std::map<std::string, int64_t> group_of;
  for (size_t g = 0; g < m.param_groups.size(); ++g)
    for (const auto& name : m.param_groups[g].names) {
      TORCH_CHECK(!group_of.count(name), "ZeroAdamW: parameter \"", name,
                  "\" is in parameter groups ", group_of[name], " and ", g);
      group_of[name] = static_cast<int64_t>(g);
    }
  std::set<std::string> seen;
  for (const auto& [name, t] : params) {
    TORCH_CHECK(seen.insert(name).second, "ZeroAdamW: parameter \"", name, "\" is given twice");
    auto it = group_of.find(name);
    TORCH_CHECK(it != group_of.end(), "ZeroAdamW: parameter \"", name,
                "\" is in no parameter group");
    TORCH_CHECK(t.defined() && t.is_floating_point() && t.is_contiguous(),
                "ZeroAdamW: parameter \"", name,
                "\" should be a defined, contiguous floating-point tensor");
    m.params.push_back({name, t, it->second});
  }
  for (const auto& [name, g] : group_of)
    TORCH_CHECK(seen.count(name), "ZeroAdamW: parameter group ", g, " names \"", name,
                "\", which is not among the parameters");
  // 2. Spaces by (tag, dtype), in GroupKind order, untagged last.
  std::map<std::pair<int, int>, Space> by_key;
  for (size_t i = 0; i < m.params.size(); ++i) {
    auto it = tags.find(m.params[i].name);
    c10::optional<GroupKind> kind = it == tags.end() ? c10::nullopt : it->second;
    const auto dtype = m.params[i].tensor.scalar_type();
    auto key = std::make_pair(kind ? static_cast<int>(*kind) : 1000, static_cast<int>(dtype));
    Space& s = by_key[key];
    if (s.params.empty()) {
      s.kind = kind;
      s.dtype = dtype;
      s.group = kind ? m.groups->get(*kind) : local_group(m.groups->world_rank);
      s.name = (kind ? to_string(*kind) : std::string("local")) + "." + dtype_name(dtype);
    }
    s.params.push_back(static_cast<int64_t>(i));
  }
  for (auto& [key, s] : by_key) {
    build_space(s, m.params, m.options);
    m.spaces.push_back(std::move(s));
  }
}

ZeroAdamW::~ZeroAdamW() = default;

std::vector<ZeroParamGroup> ZeroAdamW::decay_groups(const NamedTensors& params,
                                                    const AdamWHyper& hyper) {
  ZeroParamGroup decay{{}, hyper}, no_decay{{}, AdamWHyper(hyper).weight_decay(0.0)};
  for (const auto& [name, t] : params) (t.dim() >= 2 ? decay : no_decay).names.push_back(name);
  return {decay, no_decay};
}

void ZeroAdamW::zero_grad() {
  torch::NoGradGuard no_grad;
  for (auto& p : impl_->params) {
    if (p.tensor.grad().defined())
      p.tensor.mutable_grad().zero_();
    else
      p.tensor.mutable_grad() = torch::zeros_like(p.tensor);
  }
}

void ZeroAdamW::reduce_gradients(double scale) {
  torch::NoGradGuard no_grad;
  auto& m = *impl_;
  // Undefined gradients count as zeros; the flat views need contiguous gradients.
  for (auto& p : m.params) {
    auto& g = p.tensor.mutable_grad();
    if (!g.defined())
      g = torch::zeros_like(p.tensor);
    else if (!g.is_contiguous())
      g = g.contiguous();
  }
  dist::CoalesceOptions co;
  co.bucket_bytes = m.options.bucket_bytes();
  for (auto& s : m.spaces) {
    if (s.sharded) {
      // Stage 1: per bucket, 1. pack the gradients, 2. reduce-scatter, 3. scale this rank's block
      // and write it into the owned elements of the gradients.
      for (const auto& bk : s.buckets) {
        auto flat = torch::empty({bk.numel}, m.params[s.params[0]].tensor.grad().options());
        for_each_run(s, m.params, bk.begin, bk.begin + bk.numel,
                     [&](int64_t p, int64_t off, int64_t n, int64_t at) {
                       flat.narrow(0, at, n).copy_(flat_grad(m.params[p]).narrow(0, off, n));
                     });
        auto mine = torch::empty({bk.counts[s.group.rank]}, flat.options());
        dist::reduce_scatter_flat_(flat, mine, bk.counts, s.group);
        if (scale != 1.0) mine.mul_(scale);
        const int64_t a = bk.begin + bk.my_offset;
        for_each_run(s, m.params, a, a + mine.numel(),
                     [&](int64_t p, int64_t off, int64_t n, int64_t at) {
                       flat_grad(m.params[p]).narrow(0, off, n).copy_(mine.narrow(0, at, n));
                     });
      }
      continue;
    }
    // Stage 0 (or a group of one): all-reduce whole gradients, then scale them.
    std::vector<torch::Tensor> grads;
    for (auto i : s.params) grads.push_back(m.params[i].tensor.grad());
    if (s.kind && s.group.size() > 1) dist::all_reduce_coalesced_(grads, s.group, co);
    if (scale != 1.0)
      for (auto& g : grads) g.mul_(scale);
  }
}

double ZeroAdamW::grad_norm_sq_local(const std::map<std::string, int64_t>& replicas) const {
  torch::NoGradGuard no_grad;
  const auto& m = *impl_;
  double total = 0.0;
  for (const auto& s : m.spaces) {
    const int64_t shard_ranks = s.sharded ? s.group.size() : 1;
    for (const auto& pc : s.pieces) {
      const auto& p = m.params[pc.param];
      auto it = replicas.find(p.name);
      const int64_t n = it == replicas.end() ? s.group.size() : it->second;
      TORCH_CHECK(n >= 1 && n % shard_ranks == 0, "ZeroAdamW::grad_norm_sq_local: replicas[\"",
                  p.name, "\"] should be a positive multiple of its group '", s.group.name,
                  "' size ", shard_ranks, " (the shard is owned once per group), got ", n);
      TORCH_CHECK(p.tensor.grad().defined(), "ZeroAdamW::grad_norm_sq_local: parameter \"", p.name,
                  "\" has no gradient (call reduce_gradients first)");
      const double copies = static_cast<double>(n / shard_ranks);
      auto g = flat_grad(p).narrow(0, pc.param_offset, pc.length).to(torch::kFloat64);
      total += g.pow(2).sum().item<double>() / copies;
    }
  }
  return total;
}

double ZeroAdamW::clip_grad_norm(double max_norm, const dist::Group& world,
                                 const std::map<std::string, int64_t>& replicas) {
  torch::NoGradGuard no_grad;
  const double norm = std::sqrt(dist::sum_over_ranks(grad_norm_sq_local(replicas), world));
  if (max_norm > 0 && norm > max_norm) clip(max_norm / (norm + 1e-6));
  return norm;
}

void ZeroAdamW::clip(double scale) {
  torch::NoGradGuard no_grad;
  for (auto& s : impl_->spaces)
    for (const auto& pc : s.pieces)
      flat_grad(impl_->params[pc.param]).narrow(0, pc.param_offset, pc.length).mul_(scale);
}

void ZeroAdamW::step() {
  torch::NoGradGuard no_grad;
  auto& m = *impl_;
  for (auto& p : m.params)
    if (!p.tensor.grad().defined()) p.tensor.mutable_grad() = torch::zeros_like(p.tensor);
  for (auto& s : m.spaces) {
    // 1. The owners step their shards.
    ++s.step;
    zero_detail::step_shard(s, m.params, m.param_groups, m.options.tile_mb());
    if (!s.sharded) continue;
    // 2. Every bucket's blocks go to every rank of the group: pack this rank's block, gather,
    //    write the other ranks' blocks into the parameters.
    for (const auto& bk : s.buckets) {
      auto flat = torch::empty({bk.numel}, m.params[s.params[0]].tensor.options());
      const int64_t mine_n = bk.counts[s.group.rank];
      auto mine = flat.narrow(0, bk.my_offset, mine_n);
      for_each_run(s, m.params, bk.begin + bk.my_offset, bk.begin + bk.my_offset + mine_n,
                   [&](int64_t p, int64_t off, int64_t n, int64_t at) {
                     mine.narrow(0, at, n).copy_(flat_value(m.params[p]).narrow(0, off, n));
                   });
      dist::all_gather_flat_(flat, mine, bk.counts, s.group);
      auto write = [&](int64_t a, int64_t b) {
        for_each_run(s, m.params, a, b, [&](int64_t p, int64_t off, int64_t n, int64_t at) {
          flat_value(m.params[p]).narrow(0, off, n).copy_(flat.narrow(0, a - bk.begin + at, n));
        });
      };
      write(bk.begin, bk.begin + bk.my_offset);
      write(bk.begin + bk.my_offset + mine_n, bk.begin + bk.numel);
    }
  }
}

void ZeroAdamW::set_lr(double lr) {
  for (auto& g : impl_->param_groups) g.hyper.lr(lr);
}

void ZeroAdamW::set_lr(size_t index, double lr) {
  TORCH_CHECK(index < impl_->param_groups.size(), "ZeroAdamW::set_lr: parameter group ", index,
              " does not exist (there are ", impl_->param_groups.size(), ")");
  impl_->param_groups[index].hyper.lr(lr);
}

const std::vector<ZeroParamGroup>& ZeroAdamW::param_groups() const {
  return impl_->param_groups;
}

const ZeroAdamWOptions& ZeroAdamW::options() const {
  return impl_->options;
}

void ZeroAdamW::set_tile_mb(double tile_mb) {
  impl_->options.tile_mb(tile_mb);
}

int64_t ZeroAdamW::step_count() const {
  return impl_->spaces.empty() ? 0 : impl_->spaces.front().step;
}

std::vector<ZeroSpaceInfo> ZeroAdamW::spaces() const {
  std::vector<ZeroSpaceInfo> out;
  for (const auto& s : impl_->spaces) {
    ZeroSpaceInfo info;
    info.name = s.name;
    info.kind = s.kind;
    info.group_size = s.sharded ? s.group.size() : 1;
    info.numel = s.numel;
    info.owned = s.owned;
    info.state_bytes = 2 * s.owned * static_cast<int64_t>(c10::elementSize(s.compute)) +
                       (s.master.defined() ? s.owned * 4 : 0);
    out.push_back(info);
  }
  return out;
}

}  // namespace hybridmoe
