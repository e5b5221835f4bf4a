// moe.cpp — the MoE layer for hybridmoe.MoE (python/hybridmoe/moe.py): _C._MoELayer, a
// single-process C++ MoE built from the Python module's options, whose forward runs
// moe_forward() (moe_functional.h) on the tensors the Python module owns (its nn.Parameters
// and buffers, bound as the layer's weights: no copies, one forward path). And, for the tests,
// _C._reference_moe: a separate C++ MoE with its own tensors, loaded from a state dict, run and
// differentiated entirely in C++.
#include <map>
#include <memory>
#include <string>

#include <torch/csrc/DynamicTypes.h>

#include "bindings.h"
#include "hybridmoe/moe_functional.h"

namespace hybridmoe::python {

namespace {

using TensorMap = std::map<std::string, torch::Tensor>;

std::string key_str(const py::handle& k) {
  return py::cast<std::string>(k);
}

// MoEOptions from the Python module's keyword arguments, by the C++ names; None keeps the C++
// default. An unknown name is an error naming it.
MoEOptions options_from(const py::dict& kw) {
  TORCH_CHECK(kw.contains("d_model") && kw.contains("num_experts"),
              "MoE: d_model and num_experts are required");
  MoEOptions o(py::cast<int64_t>(kw["d_model"]), py::cast<int64_t>(kw["num_experts"]));
  GateOptions& g = o.gate();
  for (const auto& item : kw) {
    const std::string k = key_str(item.first);
    const py::handle v = item.second;
    if (v.is_none() || k == "d_model" || k == "num_experts") continue;
    auto i64 = [&] { return py::cast<int64_t>(v); };
    auto f64 = [&] { return py::cast<double>(v); };
    auto flag = [&] { return py::cast<bool>(v); };
    auto str = [&] { return py::cast<std::string>(v); };
    // The layer's own options.
    if (k == "d_hidden")
      o.d_hidden(i64());
    else if (k == "activation")
      o.activation(parse_activation(str()));
    else if (k == "bias")
      o.bias(flag());
    else if (k == "shared_expert_hidden")
      o.shared_expert_hidden(i64());
    else if (k == "shared_expert_gate")
      o.shared_expert_gate(flag());
    // The gate's (GateOptions, same names; `gate` is its type).
    else if (k == "gate")
      g.type(str());
    else if (k == "top_k")
      g.top_k(i64());
    else if (k == "capacity_factor")
      g.capacity_factor(f64());
    else if (k == "eval_capacity_factor")
      g.eval_capacity_factor(f64());
    else if (k == "min_capacity")
      g.min_capacity(i64());
    else if (k == "convention")
      g.convention(parse_convention(str()));
    else if (k == "drop_policy")
      g.drop_policy(parse_drop_policy(str()));
    else if (k == "slot_order")
      g.slot_order(parse_slot_order(str()));
    else if (k == "weight_normalization")
      g.weight_normalization(parse_weight_normalization(str()));
    else if (k == "capacity_formula")
      g.capacity_formula(parse_capacity_formula(str()));
    else if (k == "balance_loss_choices")
      g.balance_loss_choices(parse_balance_loss_choices(str()));
    else if (k == "batch_prioritized")
      g.batch_prioritized(flag());
    else if (k == "normalize_top_k_weights")
      g.normalize_top_k_weights(flag());
    else if (k == "aux_loss_coef")
      g.aux_loss_coef(f64());
    else if (k == "z_loss_coef")
      g.z_loss_coef(f64());
    else if (k == "seed")
      g.seed(i64());
    else if (k == "softmax_over_topk")
      g.softmax_over_topk(flag());
    else if (k == "bias_update_rate")
      g.bias_update_rate(f64());
    else if (k == "score_function")
      g.score_function(parse_score_function(str()));
    else if (k == "selection_bias")
      g.selection_bias(flag());
    else if (k == "n_group")
      g.n_group(i64());
    else if (k == "topk_group")
      g.topk_group(i64());
    else if (k == "routed_scaling_factor")
      g.routed_scaling_factor(f64());
    else if (k == "gumbel_second_expert")
      g.gumbel_second_expert(flag());
    else if (k == "random_routing")
      g.random_routing(flag());
    else if (k == "jitter_eps")
      g.jitter_eps(f64());
    else if (k == "random_token_selection")
      g.random_token_selection(flag());
    else if (k == "cosine_projection_dim")
      g.cosine_projection_dim(i64());
    else if (k == "cosine_init_temperature")
      g.cosine_init_temperature(f64());
    else if (k == "noise_epsilon")
      g.noise_epsilon(f64());
    else if (k == "sinkhorn_tolerance")
      g.sinkhorn_tolerance(f64());
    else if (k == "sinkhorn_max_iterations")
      g.sinkhorn_max_iterations(i64());
    else
      TORCH_CHECK(false, "MoE: unknown option \"", k, "\"");
  }
  return o;
}

TensorMap tensor_map(const py::dict& d) {
  TensorMap out;
  for (const auto& item : d) out[key_str(item.first)] = py::cast<torch::Tensor>(item.second);
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

// One single-process layer per Python module, its weights bound from Python at each call.
struct Layer {
  explicit Layer(const py::dict& kw) : layer(options_from(kw)) {}
  MoE layer;
};

}  // namespace

void bind_moe(py::module_& m) {
  py::class_<Layer, std::shared_ptr<Layer>>(m, "_MoELayer",
                                            "The C++ MoE layer behind hybridmoe.MoE (internal).")
      .def(py::init<const py::dict&>(), py::arg("options"))
      .def(
          "initial_tensors", [](Layer& l) { return named_tensors(*l.layer); },
          "(parameters, buffers): the layer's own initial tensors by name (C++ init).")
      .def(
          "bind", [](Layer& l, const py::dict& t) { bind_moe_tensors(*l.layer, tensor_map(t)); },
          py::arg("tensors"))
      .def(
          "forward",
          [](Layer& l, const py::dict& t, const torch::Tensor& x, bool training) {
            TensorMap tensors = tensor_map(t);
            MoEOutput out;
            {
              py::gil_scoped_release no_gil;
              l.layer->train(training);
              out = moe_forward(*l.layer, tensors, x);
            }
            return result(out);
          },
          py::arg("tensors"), py::arg("x"), py::arg("training"),
          "moe_forward with the given parameters and buffers: (output, aux_loss, stats).")
      .def(
          "after_step",
          [](Layer& l, const py::dict& t) {
            bind_moe_tensors(*l.layer, tensor_map(t));
            l.layer->gate->after_step();
          },
          py::arg("tensors"));

  m.def(
      "_reference_moe",
      [](const py::dict& kw, const py::dict& state, const torch::Tensor& x,
         const torch::Tensor& grad_output, bool training) {
        // A C++ MoE owning its tensors, loaded from `state` in the state's dtype, run and
        // differentiated in C++: (output, aux_loss, stats, {name: grad}).
        MoE layer(options_from(kw));
        TensorMap given = tensor_map(state);
        {
          torch::NoGradGuard no_grad;
          for (const auto& kv : given) {
            if (torch::isFloatingType(kv.second.scalar_type())) {
              layer->to(kv.second.scalar_type());
              break;
            }
          }
          for (auto& kv : layer->named_parameters()) kv.value().copy_(given.at(kv.key()));
          for (auto& kv : layer->named_buffers()) kv.value().copy_(given.at(kv.key()));
        }
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
