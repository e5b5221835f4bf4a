// main.cpp — a consumer of the installed hybridmoe package: one MoE forward and backward through
// the single-process umbrella header, which must not pull in c10d (checked at compile time), and
// the generated version header.
#include <hybridmoe/hybridmoe.h>

#include <iostream>

// Compiles only if no c10d header came in: a namespace alias cannot take an existing
// namespace's name.
namespace c10d = std;
static_assert(hybridmoe::kVersionMajor >= 0 && hybridmoe::kVersion[0] != '@',
              "version.h must be generated from the project version");

int main() {
  using namespace hybridmoe;
  MoE moe(MoEOptions(16, 4).d_hidden(32).top_k(2));
  auto x = torch::randn({10, 16}, torch::requires_grad());
  auto out = moe(x);
  (out.output.sum() + out.aux_loss).backward();
  const bool ok = out.output.sizes() == x.sizes() && x.grad().defined() &&
                  out.stats.tokens_per_expert.sum().item<int64_t>() == 20;
  std::cout << (ok ? "consumer ok" : "consumer FAILED") << std::endl;
  return ok ? 0 : 1;
}
