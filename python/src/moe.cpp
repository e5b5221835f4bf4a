// moe.cpp — the MoE layer for hybridmoe.MoE (python/hybridmoe/moe.py): _C._MoELayer, a
// single-process C++ MoE built from the Python module's options, whose forward runs
// moe_forward() (moe_functional.h) on the tensors the Python module owns (its nn.Parameters
// and buffers, bound as the layer's weights: no copies, one forward path). And, for the tests,
// _C._reference_moe: a separate C++ MoE with its own tensors, loaded from a state dict, run and
// differentiated entirely in C++.
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/DynamicTypes.h>

#include "bindings.h"
#include "hybridmoe/collectives.h"
#include "hybridmoe/grouped_dp.h"
#include "hybridmoe/moe_functional.h"
#include "hybridmoe/parallel.h"
#include "hybridmoe/placement.h"

namespace hybridmoe::python {

namespace {

using TensorMap = std::map<std::string, torch::Tensor>;

TensorMap tensor_map(const py::dict& d) {
  TensorMap out;
  for (const auto& item : d)
    out[py::cast<std::string>(item.first)] = py::cast<torch::Tensor>(item.second);
  return out;
}

py::dict stats_dict(const RoutingStats& s) {
  py::dict d;
  d["tokens_per_expert"] = s.tokens_per_expert;
  d["dropped"] = s.tokens_dropped;
  d["capacity"] = s.capacity;
  d["router_entropy"] = s.router_entropy;
  py::dict terms;
  for (const auto& kv : s.loss_terms) terms[py::str(kv.first)] = kv.second;
  d["loss_terms"] = terms;
  py::dict choices;
  choices["token"] = s.choices.token;
  choices["expert"] = s.choices.expert;
  choices["weight"] = s.choices.weight;
  choices["slot"] = s.choices.slot;
  choices["kept"] = s.choices.kept;
  d["choices"] = choices;
  return d;
}

py::tuple result(const MoEOutput& out) {
  return py::make_tuple(out.output, out.aux_loss, stats_dict(out.stats));
}

// The layer's tensors by name: (parameters, buffers), in named_parameters() order.
py::tuple named_tensors(MoEImpl& layer) {
  py::dict params, buffers;
  for (const auto& kv : layer.named_parameters()) params[py::str(kv.key())] = kv.value();
  for (const auto& kv : layer.named_buffers()) buffers[py::str(kv.key())] = kv.value();
  return py::make_tuple(params, buffers);
}

// The options of the one-process layer a distributed one is a shard of: without the settings
// that only concern the exchange between ranks.
MoEOptions one_process(MoEOptions options) {
  options.a2a_overlap_degree(1);
  options.replicate(ReplicateOptions());
  options.a2a_algorithm(A2AAlgorithm::kFlat);
  return options;
}

// The dtype of a layer's tensors: that of the first floating-point one (buffers such as counters
// may be integral).
torch::ScalarType floating_dtype(const TensorMap& tensors) {
  for (const auto& kv : tensors)
    if (torch::isFloatingType(kv.second.scalar_type())) return kv.second.scalar_type();
  C10_THROW_ERROR(Error, "MoE: expected a floating-point tensor among the layer's tensors");
}

// A one-process layer that owns copies of `tensors` (every parameter and buffer, by name and
// shape, in `dtype`); an unknown, missing or misshapen tensor is an error naming it and `who`.
MoE layer_holding(const MoEOptions& options, const TensorMap& tensors, torch::ScalarType dtype,
                  const char* who) {
  torch::NoGradGuard no_grad;
  MoE layer(options);
  layer->to(dtype);
  auto slots = layer->named_parameters();
  for (const auto& kv : layer->named_buffers()) slots.insert(kv.key(), kv.value());
  for (const auto& kv : tensors)
    TORCH_CHECK(slots.contains(kv.first), who, ": unknown tensor \"", kv.first, "\"");
  for (auto& kv : slots) {
    auto it = tensors.find(kv.key());
    TORCH_CHECK(it != tensors.end(), who, ": missing tensor \"", kv.key(), "\" (shape ",
                kv.value().sizes(), ")");
    TORCH_CHECK(it->second.sizes() == kv.value().sizes(), who, ": tensor \"", kv.key(),
                "\" should have shape ", kv.value().sizes(), ", got ", it->second.sizes());
    kv.value().copy_(it->second);
  }
  return layer;
}

// One layer per Python module, its weights bound from Python at each call: single-process, or
// distributed over a layout's groups. A distributed layer starts as this rank's shard of a
// single-process layer initialised with the same options (MoE::load_shard_from), so that a seed
// gives the same model under every layout.
struct Layer {
  Layer(const py::dict& kw, std::shared_ptr<const ParallelGroups> groups)
      : layer(make(options_from(kw), std::move(groups))) {}

  static MoE make(const MoEOptions& options, std::shared_ptr<const ParallelGroups> groups) {
    if (!groups) return MoE(options);
    // The shard's own initial values are replaced below: its init must not consume random
    // numbers, so that the global generator ends where the one-process layer's init leaves it
    // (what the program builds next is the same under every layout).
    auto generator = at::detail::getDefaultCPUGenerator();
    at::Tensor state;
    {
      std::lock_guard<std::mutex> lock(generator.mutex());
      state = generator.get_state();
    }
    MoE shard(options, std::move(groups));
    {
      std::lock_guard<std::mutex> lock(generator.mutex());
      generator.set_state(state);
    }
    MoE full(one_process(options));
    shard->load_shard_from(*full);
    return shard;
  }

  // Copies this rank's shard of a one-process layer's tensors (`full`, by name, full shapes;
  // all of them) into `tensors` (this module's, bound into the layer).
  void load_full(const TensorMap& tensors, const TensorMap& full_tensors) {
    torch::NoGradGuard no_grad;
    MoE full = layer_holding(one_process(layer->options), full_tensors, floating_dtype(tensors),
                             "MoE.load_full_state_dict");
    bind_moe_tensors(*layer, tensors);
    if (layer->is_distributed()) {
      layer->load_shard_from(*full);
    } else {
      for (const auto& kv : tensors) kv.second.copy_(full_tensors.at(kv.first));
    }
  }

  // The one-process layer's tensors, gathered from every rank's shard (collective over the
  // stage's ep, etp and tp groups): experts over ep/etp, the shared expert over tp; the gate and
  // the buffers are this rank's (replicated). Copies, detached.
  TensorMap full_tensors(const TensorMap& tensors) {
    bind_moe_tensors(*layer, tensors);
    torch::NoGradGuard no_grad;
    TensorMap out;
    if (layer->is_distributed()) {
      for (auto& kv : layer->gather_full_expert_parameters())
        out["experts." + kv.first] = kv.second;
      // The experts' output bias lives on etp rank 0 only (fixed layout): every etp rank gets
      // its copy.
      const ParallelGroups& g = *layer->groups();
      if (!layer->is_adaptive() && g.etp.size() > 1 && layer->options.bias()) {
        auto it = out.find("experts.b2");
        const auto& w1 = out.at("experts.w1");
        std::vector<torch::Tensor> b2 = {
            it != out.end() ? it->second : torch::empty({w1.size(0), w1.size(1)}, w1.options())};
        dist::broadcast_(b2, 0, g.etp);
        out["experts.b2"] = b2[0];
      }
      if (layer->shared_expert) {
        MoE full(one_process(layer->options));
        full->to(floating_dtype(tensors));
        layer->gather_full_shared_expert(*full);
        for (const auto& kv : full->named_parameters())
          if (kv.key().rfind("shared_", 0) == 0) out[kv.key()] = kv.value().detach().clone();
      }
    }
    for (const auto& kv : tensors)
      if (!out.count(kv.first)) out[kv.first] = kv.second.detach().clone();
    return out;
  }

  MoE layer;
  // Binding the caller's tensors and running the forward is one step: two threads calling the
  // same module take turns (the autograd graph a forward leaves holds the tensors it used, so
  // later bindings do not disturb its backward).
  std::mutex mutex;
};

}  // namespace

void bind_moe(py::module_& m) {
  py::class_<Layer, std::shared_ptr<Layer>>(m, "_MoELayer",
                                            "The C++ MoE layer behind hybridmoe.MoE (internal).")
      .def(py::init<const py::dict&, std::shared_ptr<const ParallelGroups>>(), py::arg("options"),
           py::arg("groups") = nullptr)
      .def_property_readonly("is_distributed", [](Layer& l) { return l.layer->is_distributed(); })
      .def_property_readonly(
          "local_experts",
          [](Layer& l) {
            std::vector<int64_t> ids;
            for (int64_t i = 0; i < l.layer->num_local_experts(); ++i)
              ids.push_back(l.layer->first_local_expert() + i);
            return ids;
          },
          "The global ids of the experts this rank holds, in local order.")
      .def_property_readonly(
          "hidden_range",
          [](Layer& l) {
            const ParallelGroups* g = l.layer->groups();
            const ExpertPlacement& p = l.layer->placement();
            const int64_t h = l.layer->options.hidden() / p.shards;
            return std::make_pair(p.hidden_slice(g ? g->stage.rank : 0) * h, h);
          },
          "(start, length): the slice of each expert's hidden width this rank holds.")
      .def_property_readonly(
          "shared_hidden_range",
          [](Layer& l) {
            const int64_t h = l.layer->options.shared_expert_hidden();
            const int64_t tp = l.layer->shared_expert_tp();
            const int64_t rank = tp > 1 ? l.layer->groups()->tp.rank : 0;
            return std::make_pair(rank * (h / tp), h / tp);
          },
          "(start, length): the slice of the shared expert's hidden width this rank holds "
          "(its tp slice; (0, 0) without a shared expert).")
      .def(
          "gradient_groups",
          [](Layer& l) {
            py::dict out;
            for (const auto& [name, kind] : gradient_group_tags(*l.layer))
              out[py::str(name)] = kind ? py::cast(to_string(*kind)) : py::none();
            return out;
          },
          "{name: group kind or None}: over which group each parameter's gradient is summed.")
      .def(
          "load_full",
          [](Layer& l, const py::dict& t, const py::dict& full) {
            TensorMap tensors = tensor_map(t), full_tensors = tensor_map(full);
            py::gil_scoped_release no_gil;
            std::lock_guard<std::mutex> lock(l.mutex);
            l.load_full(tensors, full_tensors);
          },
          py::arg("tensors"), py::arg("full"),
          "Copies this rank's shard of the one-process layer's tensors `full` into `tensors`.")
      .def(
          "full_tensors",
          [](Layer& l, const py::dict& t) {
            TensorMap tensors = tensor_map(t);
            py::gil_scoped_release no_gil;
            std::lock_guard<std::mutex> lock(l.mutex);
            return l.full_tensors(tensors);
          },
          py::arg("tensors"),
          "The one-process layer's tensors gathered from every rank's shard (collective over "
          "the stage's ep, etp and tp groups).")
      .def(
          "initial_tensors", [](Layer& l) { return named_tensors(*l.layer); },
          "(parameters, buffers): the layer's own initial tensors by name (C++ init).")
      .def(
          "bind",
          [](Layer& l, const py::dict& t) {
            TensorMap tensors = tensor_map(t);
            py::gil_scoped_release no_gil;
            std::lock_guard<std::mutex> lock(l.mutex);
            bind_moe_tensors(*l.layer, tensors);
          },
          py::arg("tensors"))
      .def(
          "forward",
          [](Layer& l, const py::dict& t, const torch::Tensor& x, bool training,
             int64_t route_groups) {
            TensorMap tensors = tensor_map(t);
            MoEOutput out;
            {
              py::gil_scoped_release no_gil;
              std::lock_guard<std::mutex> lock(l.mutex);
              l.layer->train(training);
              if (route_groups == 1) {
                out = moe_forward(*l.layer, tensors, x);
              } else {
                // One process routing its tokens in route_groups consecutive, evenly split
                // groups: what a layout whose tp slices a replicated input computes.
                TORCH_CHECK(route_groups > 1 && !l.layer->is_distributed(),
                            "MoE: route_groups should be >= 1 and is for a one-process layer, "
                            "got ",
                            route_groups, l.layer->is_distributed() ? " on a distributed one" : "");
                bind_moe_tensors(*l.layer, tensors);
                auto flat = x.reshape({-1, x.size(-1)});
                out = l.layer->forward_grouped(flat, dist::even_split(flat.size(0), route_groups));
                out.output = out.output.view(x.sizes());
              }
            }
            return result(out);
          },
          py::arg("tensors"), py::arg("x"), py::arg("training"), py::arg("route_groups") = 1,
          "moe_forward with the given parameters and buffers: (output, aux_loss, stats); "
          "route_groups > 1 (one process): the tokens routed in that many even groups.")
      .def(
          "after_step",
          [](Layer& l, const py::dict& t) {
            TensorMap tensors = tensor_map(t);
            std::lock_guard<std::mutex> lock(l.mutex);
            bind_moe_tensors(*l.layer, tensors);
            l.layer->gate->after_step();
          },
          py::arg("tensors"));

  m.def(
      "_time_cpp_moe",
      [](const py::dict& kw, const py::dict& state, const torch::Tensor& x,
         const torch::Tensor& grad_output, int64_t repeats) {
        // The binding-overhead yardstick: a C++ MoE owning its tensors (loaded from `state`),
        // forward + backward `repeats` times entirely in C++; the wall time of each, in ms.
        TORCH_CHECK(repeats > 0, "repeats should be positive, got ", repeats);
        const TensorMap given = tensor_map(state);
        MoE layer = layer_holding(options_from(kw), given, floating_dtype(given), "_time_cpp_moe");
        std::vector<double> ms;
        py::gil_scoped_release no_gil;
        layer->train(true);
        for (int64_t i = 0; i < repeats; ++i) {
          const auto t0 = std::chrono::steady_clock::now();
          for (auto& p : layer->parameters()) p.mutable_grad() = torch::Tensor();
          MoEOutput out = layer->forward(x);
          ((out.output * grad_output).sum() + out.aux_loss).backward();
          ms.push_back(
              std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                  .count());
        }
        return ms;
      },
      py::arg("options"), py::arg("state"), py::arg("x"), py::arg("grad_output"),
      py::arg("repeats"));

  m.def(
      "_reference_moe",
      [](const py::dict& kw, const py::dict& state, const torch::Tensor& x,
         const torch::Tensor& grad_output, bool training) {
        // A C++ MoE owning its tensors, loaded from `state` in the state's dtype, run and
        // differentiated in C++: (output, aux_loss, stats, {name: grad}).
        const TensorMap given = tensor_map(state);
        MoE layer = layer_holding(options_from(kw), given, floating_dtype(given), "_reference_moe");
        MoEOutput out;
        {
          // The autograd engine runs without the GIL.
          py::gil_scoped_release no_gil;
          layer->train(training);
          out = layer->forward(x);
          auto loss = (out.output * grad_output).sum() + out.aux_loss;
          loss.backward();
        }
        py::dict grads;
        for (const auto& kv : layer->named_parameters())
          grads[py::str(kv.key())] = kv.value().grad();
        return py::make_tuple(out.output.detach(), out.aux_loss.detach(), stats_dict(out.stats),
                              grads);
      },
      py::arg("options"), py::arg("state"), py::arg("x"), py::arg("grad_output"),
      py::arg("training") = true);
}

}  // namespace hybridmoe::python
