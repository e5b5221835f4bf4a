// recompute.cpp — see recompute.h: the checkpoint autograd function (forward without activations,
// backward by recomputation with the generators restored and the collectives replayed).
#include "hybridmoe/recompute.h"

#include <mutex>
#include <set>

#include "hybridmoe/detail/comm_tape.h"

namespace hybridmoe {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

Recompute parse_recompute(const std::string& name) {
  if (name == "none") return Recompute::kNone;
  if (name == "block") return Recompute::kBlock;
  if (name == "moe") return Recompute::kMoE;
  C10_THROW_ERROR(Error,
                  c10::str("recompute must be \"none\", \"block\" or \"moe\", got \"", name, "\""));
}

const char* recompute_name(Recompute mode) {
  switch (mode) {
    case Recompute::kNone:
      return "none";
    case Recompute::kBlock:
      return "block";
    case Recompute::kMoE:
      return "moe";
  }
  return "?";
}

namespace {

// The generators a region may draw from: the CPU one and those of its inputs' CUDA devices.
std::vector<at::Generator> generators_of(const std::vector<torch::Tensor>& inputs) {
  std::vector<at::Generator> gens = {at::detail::getDefaultCPUGenerator()};
  std::set<int> cuda_devices;
  for (const auto& t : inputs)
    if (t.defined() && t.is_cuda()) cuda_devices.insert(t.device().index());
  for (int d : cuda_devices)
    gens.push_back(at::globalContext().defaultGenerator(at::Device(at::kCUDA, d)));
  return gens;
}

std::vector<torch::Tensor> states_of(std::vector<at::Generator>& gens) {
  std::vector<torch::Tensor> states;
  for (auto& g : gens) {
    std::lock_guard<std::mutex> lock(g.mutex());
    states.push_back(g.get_state());
  }
  return states;
}

void set_states(std::vector<at::Generator>& gens, const std::vector<torch::Tensor>& states) {
  for (size_t i = 0; i < gens.size(); ++i) {
    std::lock_guard<std::mutex> lock(gens[i].mutex());
    gens[i].set_state(states[i]);
  }
}

// Everything the backward needs besides the saved inputs.
struct CheckpointState : torch::CustomClassHolder {
  CheckpointFunction fn;
  bool cache_comm = true;
  dist::CommTape tape;
  std::vector<at::Generator> generators;
  std::vector<torch::Tensor> rng_states;  // at the first call
  std::vector<bool> needs_grad;           // per input
};

// Sets the generators to the first call's states for the recomputation, then back.
class RngReplay {
 public:
  explicit RngReplay(CheckpointState& st) : st_(st), now_(states_of(st.generators)) {
    set_states(st_.generators, st_.rng_states);
  }
  ~RngReplay() { set_states(st_.generators, now_); }

 private:
  CheckpointState& st_;
  std::vector<torch::Tensor> now_;
};

struct CheckpointFn : torch::autograd::Function<CheckpointFn> {
  // anchor: an empty leaf that requires grad, so backward runs even when no input requires grad
  // (the region's parameters still need their gradients).
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& /*anchor*/,
                               at::TensorList inputs, c10::intrusive_ptr<CheckpointState> st) {
    std::vector<torch::Tensor> in(inputs.begin(), inputs.end());
    // 1. The first run, under the autograd function's no-grad mode, recording its collectives.
    variable_list outs;
    {
      dist::CommTapeScope scope(st->cache_comm ? &st->tape : nullptr,
                                dist::CommTape::Mode::kRecord);
      outs = st->fn(in);
    }
    for (size_t k = 0; k < outs.size(); ++k) {
      TORCH_CHECK(outs[k].defined() && torch::isFloatingType(outs[k].scalar_type()),
                  "checkpoint: output ", k, " must be a defined floating-point tensor");
      for (const auto& x : in)
        TORCH_CHECK(!outs[k].is_same(x), "checkpoint: output ", k,
                    " is one of the inputs; return a new tensor");
    }
    ctx->save_for_backward(in);
    ctx->saved_data["state"] = c10::IValue::make_capsule(st);
    return outs;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto* st = static_cast<CheckpointState*>(ctx->saved_data["state"].toCapsule().get());
    // 1. Fresh leaves for the saved inputs.
    std::vector<torch::Tensor> in;
    auto saved = ctx->get_saved_variables();
    for (size_t i = 0; i < saved.size(); ++i)
      in.push_back(saved[i].detach().requires_grad_(st->needs_grad[i]));
    // 2. The recomputation: same generator states, collectives replayed from the tape.
    variable_list outs;
    {
      RngReplay rng(*st);
      dist::CommTapeScope scope(st->cache_comm ? &st->tape : nullptr,
                                dist::CommTape::Mode::kReplay);
      torch::AutoGradMode grad_on(true);
      outs = st->fn(in);
    }
    TORCH_CHECK(st->tape.remaining() == 0, "recompute: the recomputed forward replayed ",
                st->tape.size() - st->tape.remaining(), " of the ", st->tape.size(),
                " collectives of the original forward; the region must run the same collectives");
    TORCH_CHECK(outs.size() == grads.size(), "recompute: the recomputed region returned ",
                outs.size(), " outputs, the first run ", grads.size());
    // 3. Back-propagate the output gradients through it (a reentrant backward).
    variable_list roots, root_grads;
    for (size_t k = 0; k < outs.size(); ++k)
      if (grads[k].defined() && outs[k].requires_grad()) {
        roots.push_back(outs[k]);
        root_grads.push_back(grads[k]);
      }
    if (!roots.empty()) torch::autograd::backward(roots, root_grads);
    // 4. Gradients of (anchor, inputs..., state).
    variable_list result = {torch::Tensor()};
    for (const auto& x : in) result.push_back(x.requires_grad() ? x.grad() : torch::Tensor());
    result.push_back(torch::Tensor());
    return result;
  }
};

}  // namespace

std::vector<torch::Tensor> checkpoint(CheckpointFunction fn,
                                      const std::vector<torch::Tensor>& inputs,
                                      const CheckpointOptions& options) {
  TORCH_CHECK(fn, "checkpoint: the function is empty");
  for (size_t i = 0; i < inputs.size(); ++i)
    TORCH_CHECK(inputs[i].defined() && torch::isFloatingType(inputs[i].scalar_type()),
                "checkpoint: input ", i, " must be a defined floating-point tensor, got ",
                inputs[i].defined() ? c10::toString(inputs[i].scalar_type()) : "undefined");
  if (!torch::GradMode::is_enabled()) return fn(inputs);
  auto st = c10::make_intrusive<CheckpointState>();
  st->fn = std::move(fn);
  st->cache_comm = options.cache_comm();
  st->generators = generators_of(inputs);
  st->rng_states = states_of(st->generators);
  for (const auto& x : inputs) st->needs_grad.push_back(x.requires_grad());
  auto anchor = torch::empty({0}, inputs.empty() ? torch::TensorOptions() : inputs[0].options())
                    .requires_grad_(true);
  return CheckpointFn::apply(anchor, at::TensorList(inputs), st);
}

}  // namespace hybridmoe
