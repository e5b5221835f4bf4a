// hybridmoe.h — the single-process umbrella header: the MoE layer, its gates and experts, the
// token dispatcher seam, the expert placement model and the version. It pulls in no c10d
// (distributed) header; distributed.h adds the layouts, the model, training and the planner.
//
// Example:
//   #include <hybridmoe/hybridmoe.h>
//   hybridmoe::MoE moe(hybridmoe::MoEOptions(512, 8).top_k(2));
//   auto out = moe(x);   // out.output: [T, 512], out.aux_loss: scalar
#pragma once

#include "hybridmoe/dispatcher.h"
#include "hybridmoe/experts.h"
#include "hybridmoe/gate.h"
#include "hybridmoe/gates.h"
#include "hybridmoe/group_kind.h"
#include "hybridmoe/model_options.h"
#include "hybridmoe/model_presets.h"
#include "hybridmoe/moe.h"
#include "hybridmoe/moe_functional.h"
#include "hybridmoe/placement.h"
#include "hybridmoe/recompute.h"
#include "hybridmoe/routing_rules.h"
#include "hybridmoe/version.h"
