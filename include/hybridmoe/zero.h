// zero.h — ZeroAdamW: AdamW (torch::optim::AdamW's math; weight_decay 0 is Adam) whose state is
// sharded over the group each parameter's gradient is reduced in (ZeRO stage 1, DeepSpeed-TED):
// the gate over its stage, dense parameters over dp, experts over edp; untagged parameters are
// stepped locally. zero_stage 0 is the replicated optimizer behind the same API.
//
// Layout of the state. The parameters of one (tag, dtype) pair form a "space": their elements in
// the order given, concatenated into one flat index range [0, N) that is the same on every rank of
// the tag group (its ranks hold same-shaped parameters). The range is cut into buckets of at most
// bucket_bytes; group rank r owns block r of every bucket, blocks split as dist::even_split(bucket
// size, group size) (uneven; possibly empty). A rank's shard of a space is its blocks in bucket
// order; it keeps AdamW's moments (and a float32 master copy of low-precision parameters) for
// those elements only. With zero_stage 0 every rank owns the whole space.
//
// One training step (stage 0 and 1 alike):
//   opt.zero_grad();
//   loss.backward();                                   // each rank: its local mean loss
//   opt.reduce_gradients(1.0 / dp);                    // reduce-scatter (stage 1) / all-reduce (0)
//   double norm = opt.clip_grad_norm(max_norm, groups->world, replicas);  // optional, exact
//   opt.set_lr(lr);
//   opt.step();                                        // owners step, then all-gather parameters
//
// After reduce_gradients with stage 1, a parameter's .grad() holds the reduced, scaled gradient
// only on the elements this rank owns (the rest keep the local, unreduced values): read gradients
// through grad_norm_sq_local / clip_grad_norm, not from .grad().
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "hybridmoe/parallel.h"

namespace hybridmoe {

/// AdamW hyper-parameters of one parameter group (torch::optim::AdamWOptions' meaning).
struct AdamWHyper {
  TORCH_ARG(double, lr) = 1e-3;
  TORCH_ARG(double, beta1) = 0.9;
  TORCH_ARG(double, beta2) = 0.999;
  TORCH_ARG(double, eps) = 1e-8;
  /// Decoupled decay: p *= 1 - lr * weight_decay before the update; 0 gives Adam.
  TORCH_ARG(double, weight_decay) = 1e-2;
};

/// Parameters (by name) that share hyper-parameters.
struct ZeroParamGroup {
  std::vector<std::string> names;
  AdamWHyper hyper;
};

/// Options of ZeroAdamW.
struct ZeroAdamWOptions {
  /// 0: replicated (all-reduce, every rank steps everything); 1: sharded optimizer state.
  TORCH_ARG(int64_t, zero_stage) = 1;
  /// Upper bound of one gradient / parameter bucket of the collectives.
  TORCH_ARG(int64_t, bucket_bytes) = int64_t{25} << 20;
  /// The step's temporaries (upcast gradients, the update's denominator) are bounded by tile_mb
  /// MiB: the shard is walked in tiles of that many bytes of temporaries. <= 0: untiled (the naive
  /// step, which materializes flat compute-precision copies of all owned gradients and
  /// parameters at once). Both give bit-identical results.
  TORCH_ARG(double, tile_mb) = 64.0;
};

/// What one space of the optimizer holds (for reports and benchmarks).
struct ZeroSpaceInfo {
  std::string name;               ///< e.g. "dp.float32", "edp.bfloat16", "local.float32"
  c10::optional<GroupKind> kind;  ///< nullopt: untagged (stepped locally)
  int64_t group_size = 1;         ///< ranks the space is sharded over (1 with stage 0)
  int64_t numel = 0;              ///< elements of the whole space
  int64_t owned = 0;              ///< elements of this rank's shard
  int64_t state_bytes = 0;        ///< moments + master of this rank's shard
};

/// Sharded AdamW (ZeRO-1) over hybridmoe's parameter groups.
///
/// Example:
///   GroupedDataParallel gdp(model.ptr(), groups);          // broadcasts, gives the tags
///   auto named = model->named_parameters().pairs();
///   ZeroAdamW opt(named, gdp.tags(), ZeroAdamW::decay_groups(named, AdamWHyper().lr(3e-4)),
///                 groups, ZeroAdamWOptions().zero_stage(1).tile_mb(16));
class ZeroAdamW {
 public:
  using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;
  using Tags = std::map<std::string, c10::optional<GroupKind>>;

  /// params: the module's named parameters (same names and shapes, in the same order, on every
  /// rank of each tag group; contiguous). tags: the group of each parameter (a name missing from
  /// tags is untagged). param_groups: every parameter in exactly one group. Collective over each
  /// tag group (checks that the group's ranks agree on the space sizes).
  ZeroAdamW(const NamedTensors& params, const Tags& tags, std::vector<ZeroParamGroup> param_groups,
            std::shared_ptr<const ParallelGroups> groups,
            ZeroAdamWOptions options = ZeroAdamWOptions());
  ~ZeroAdamW();
  ZeroAdamW(const ZeroAdamW&) = delete;
  ZeroAdamW& operator=(const ZeroAdamW&) = delete;

  /// The trainer's grouping: weight decay hyper.weight_decay() on parameters with dim >= 2, none
  /// on the others (two groups, decay first).
  static std::vector<ZeroParamGroup> decay_groups(const NamedTensors& params,
                                                  const AdamWHyper& hyper);

  /// Sets every parameter's gradient to zero (allocating it where undefined).
  void zero_grad();

  /// Sums each tagged gradient over its group — a reduce-scatter into the owners' shards (stage
  /// 1) or an all-reduce (stage 0) — and multiplies the result (untagged gradients too) by
  /// `scale`. An undefined gradient counts as zeros. Collective over every tag group, in
  /// GroupKind order.
  void reduce_gradients(double scale = 1.0);

  /// This rank's share of the squared global gradient norm (after reduce_gradients): the sum of
  /// squares of the gradient elements it owns, each divided by the number of ranks that own an
  /// identical copy of it. replicas[name]: ranks holding an identical copy of the parameter's
  /// reduced gradient in the unsharded setting (e.g. tp * dp for a dense parameter replicated over
  /// tp, dp for a tp-sharded one — the trainer's gradient_replicas); a missing name means the
  /// size of its tag group (1 if untagged). Under stage 1 an element has replicas / group_size
  /// owners. Summing this over the world (all-reduce) gives the exact squared global norm.
  double grad_norm_sq_local(const std::map<std::string, int64_t>& replicas = {}) const;

  /// The global gradient norm (grad_norm_sq_local summed over `world`, square-rooted); if
  /// max_norm > 0 and the norm exceeds it, scales the owned gradients by max_norm / (norm + 1e-6)
  /// (the trainer's rule). Collective over `world`. Returns the norm before clipping.
  double clip_grad_norm(double max_norm, const dist::Group& world,
                        const std::map<std::string, int64_t>& replicas = {});

  /// Multiplies the owned (reduced) gradients by scale.
  void clip(double scale);

  /// One AdamW step of the owned shard, then (stage 1) all-gathers the updated parameters within
  /// each tag group. Collective over every tag group.
  void step();

  /// Learning rate of every parameter group / of group `index`.
  void set_lr(double lr);
  void set_lr(size_t index, double lr);
  const std::vector<ZeroParamGroup>& param_groups() const;
  const ZeroAdamWOptions& options() const;
  /// Changes the tile of later steps (results do not depend on it).
  void set_tile_mb(double tile_mb);
  /// Steps taken so far.
  int64_t step_count() const;

  /// This rank's shard of the optimizer state, as named tensors (CPU copies are not made: the
  /// tensors alias the state; save them, do not modify them). Per space "zero.<space>." +
  /// step, exp_avg, exp_avg_sq, master (low precision only), layout (zero stage, group size and
  /// rank, space size, owned elements, bucket elements) and checksum (of the others).
  NamedTensors state() const;

  /// Loads a shard written by state() on the same rank of the same layout. Refuses (naming the
  /// entry) a missing, unknown, mis-shaped or mis-typed entry, a shard of another layout or
  /// rank, and a corrupted one (checksum mismatch, negative or non-finite second moments).
  void load_state(const NamedTensors& state);

  std::vector<ZeroSpaceInfo> spaces() const;

  /// The state per parameter, independent of the layout: "<name>.exp_avg", "<name>.exp_avg_sq"
  /// (and "<name>.master" for low-precision parameters) in the parameter's shape, gathered from
  /// their owners, and "step". Collective over every sharded tag group (zero_optimizer's order).
  NamedTensors gather_moments() const;
  /// The reverse: sets this rank's shard from per-parameter state (every parameter's entries and
  /// "step" must be present, shaped like the parameter); a missing master is taken from the
  /// parameter. Refuses missing or mis-shaped entries by name. Local (no communication).
  void load_moments(const NamedTensors& moments);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace hybridmoe
