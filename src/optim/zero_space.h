// zero_space.h — internal: the flat "space" of ZeroAdamW (see zero.h) — the parameters of one
// (tag, dtype) pair laid end to end, its buckets, the pieces of parameters this rank owns, and
// the shard's optimizer state — and the step kernels that update an owned shard.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "hybridmoe/zero.h"

namespace hybridmoe::zero_detail {

/// One parameter known to the optimizer.
struct Param {
  std::string name;
  torch::Tensor tensor;  ///< the module's parameter (its .grad() is read and written)
  int64_t pgroup = 0;    ///< index of its ZeroParamGroup
};

/// A run of owned elements inside one parameter.
struct Piece {
  int64_t param = 0;         ///< index into the optimizer's params
  int64_t param_offset = 0;  ///< first element inside the flattened parameter
  int64_t length = 0;
  int64_t shard_offset = 0;  ///< first element inside this rank's shard
};

/// A bucket: the flat range [begin, begin + numel) of the space, split over the group's ranks.
struct Bucket {
  int64_t begin = 0;
  int64_t numel = 0;
  std::vector<int64_t> counts;  ///< block size of each group rank (dist::even_split)
  int64_t my_offset = 0;        ///< start of this rank's block inside the bucket
};

struct Space {
  std::string name;
  c10::optional<GroupKind> kind;
  dist::Group group;                            ///< the tag group (a group of one when untagged)
  bool sharded = false;                         ///< stage 1 over a group of more than one rank
  torch::ScalarType dtype = torch::kFloat32;    ///< of the parameters
  torch::ScalarType compute = torch::kFloat32;  ///< of the moments and the master copy
  std::vector<int64_t> params;  ///< indices into the optimizer's params, in flat order
  std::vector<int64_t> begin;   ///< flat offset of each of them
  int64_t numel = 0, owned = 0, bucket_elems = 0;
  std::vector<Bucket> buckets;
  std::vector<Piece> pieces;          ///< owned runs, in shard order
  torch::Tensor exp_avg, exp_avg_sq;  ///< [owned] compute dtype
  torch::Tensor master;               ///< [owned] float32; undefined for float32/float64 params
  int64_t step = 0;
};

/// Flattened views of a parameter's values and gradient.
inline torch::Tensor flat_value(const Param& p) {
  return p.tensor.detach().view({-1});
}
inline torch::Tensor flat_grad(const Param& p) {
  return p.tensor.grad().view({-1});
}

/// One AdamW step of the space's owned shard (space.step already incremented). tile_mb <= 0:
/// the untiled step (flat copies of the whole shard); else tiles of at most tile_mb MiB of
/// temporaries. Bit-identical results either way.
void step_shard(Space& space, const std::vector<Param>& params,
                const std::vector<ZeroParamGroup>& groups, double tile_mb);

/// Elements per tile for a space: tile_mb MiB divided by the temporaries of one element.
int64_t tile_elements(const Space& space, double tile_mb);

/// 64-bit checksum of the bytes of contiguous CPU tensors (FNV-1a over 8-byte words).
uint64_t checksum(const std::vector<torch::Tensor>& tensors);

}  // namespace hybridmoe::zero_detail

namespace hybridmoe {

/// The state of a ZeroAdamW (shared by zero_optimizer.cpp and zero_state.cpp).
struct ZeroAdamW::Impl {
  ZeroAdamWOptions options;
  std::shared_ptr<const ParallelGroups> groups;
  std::vector<ZeroParamGroup> param_groups;
  std::vector<zero_detail::Param> params;
  std::vector<zero_detail::Space> spaces;  ///< in GroupKind order (untagged last), then dtype
};

}  // namespace hybridmoe
