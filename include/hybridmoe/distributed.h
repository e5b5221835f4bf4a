// distributed.h — the whole public API: the single-process layer (hybridmoe.h) plus process
// start-up and groups, the collectives, the parallel layouts, the GPT model and its pipeline,
// the sharded optimizer, training, the planner and the layout proofs (verify).
//
// Example:
//   #include <hybridmoe/distributed.h>
//   auto world = hybridmoe::dist::init();
//   auto groups = std::make_shared<hybridmoe::ParallelGroups>(
//       hybridmoe::ParallelGroups::build(hybridmoe::ParallelConfig{1, 2, 1, 2, 1}, *world));
//   hybridmoe::MoE moe(hybridmoe::MoEOptions(512, 8).top_k(2), groups);
#pragma once

#include "hybridmoe/hybridmoe.h"

#include "hybridmoe/attention.h"
#include "hybridmoe/collectives.h"
#include "hybridmoe/comm_stats.h"
#include "hybridmoe/data.h"
#include "hybridmoe/dist.h"
#include "hybridmoe/grouped_dp.h"
#include "hybridmoe/model.h"
#include "hybridmoe/parallel.h"
#include "hybridmoe/pipeline.h"
#include "hybridmoe/plan.h"
#include "hybridmoe/safetensors.h"
#include "hybridmoe/tensor_parallel.h"
#include "hybridmoe/train.h"
#include "hybridmoe/verify.h"
#include "hybridmoe/zero.h"
