// main.cpp — a consumer of the installed hybridmoe package: one MoE forward and backward.
#include <hybridmoe/hybridmoe.h>

#include <iostream>

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
