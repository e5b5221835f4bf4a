// hybridmoe.h — umbrella header of the hybridmoe library.
#pragma once

#include "hybridmoe/compat.h"
#include "hybridmoe/dispatch.h"
#include "hybridmoe/experts.h"
#include "hybridmoe/gate.h"
#include "hybridmoe/moe.h"
#include "hybridmoe/version.h"
