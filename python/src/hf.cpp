// hf.cpp — hybridmoe.hf_config(dir): a Hugging Face model directory's config.json read by
// hybridmoe's own reader (hf::read_config: the five MoE families, each key with its family's
// default, every value hybridmoe cannot honour refused by name) as a dict of the model options
// that matter, by their C++ names (GPTOptions, GateOptions). And, for hybridmoe.load_hf
// (python/hybridmoe/hf_load.py), _C._Checkpoint: a checkpoint directory's tensors through
// hf::Checkpoint (one model.safetensors, or the shards of model.safetensors.index.json), and
// _C._safetensors_save: one .safetensors file written by hybridmoe's writer.
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <torch/csrc/DynamicTypes.h>

#include "bindings.h"
#include "hybridmoe/hf.h"

namespace hybridmoe::python {

namespace {

py::dict config_dict(const hf::Config& config) {
  const GPTOptions& o = config.options;
  const GateOptions& g = o.gate();
  py::dict d;
  d["family"] = to_string(config.family);
  d["dtype"] = py::reinterpret_borrow<py::object>(
      reinterpret_cast<PyObject*>(torch::getTHPDtype(config.dtype)));
  // Sizes; the derived ones resolved (n_kv_heads, head_dim, d_mlp, expert_hidden are 0 in
  // GPTOptions when they follow from others).
  d["vocab_size"] = o.vocab_size();
  d["context"] = o.context();
  d["d_model"] = o.d_model();
  d["n_layers"] = o.n_layers();
  d["n_heads"] = o.n_heads();
  d["n_kv_heads"] = o.kv_heads();
  d["head_dim"] = o.head_size();
  d["d_mlp"] = o.mlp_hidden();
  d["tie_embeddings"] = o.tie_embeddings();
  // Norms, positions, attention.
  d["norm"] = to_string(o.norm());
  d["norm_eps"] = o.norm_eps();
  d["position"] = to_string(o.position());
  d["rope_theta"] = o.rope_theta();
  d["rope_interleaved"] = o.rope_interleaved();
  d["rope_scaling"] = to_string(o.rope_scaling());
  d["rope_factor"] = o.rope_factor();
  d["attention"] = to_string(o.attention());
  d["qkv_bias"] = o.qkv_bias();
  d["attn_out_bias"] = o.attn_out_bias();
  d["qk_norm"] = to_string(o.qk_norm());
  d["clip_qkv"] = o.clip_qkv();
  d["q_lora_rank"] = o.q_lora_rank();
  d["kv_lora_rank"] = o.kv_lora_rank();
  d["qk_nope_head_dim"] = o.qk_nope_head_dim();
  d["qk_rope_head_dim"] = o.qk_rope_head_dim();
  d["v_head_dim"] = o.v_head_dim();
  // Where the MoE layers are, and what they hold.
  d["moe_every"] = o.moe_every();
  d["first_k_dense"] = o.first_k_dense();
  d["mlp_only_layers"] = o.mlp_only_layers();
  d["moe_layers"] = [&o] {
    std::vector<int64_t> layers;
    for (int64_t i = 0; i < o.n_layers(); ++i) {
      if (o.is_moe_block(i)) layers.push_back(i);
    }
    return layers;
  }();
  d["num_experts"] = o.num_experts();
  d["expert_hidden"] = o.expert_hidden() > 0 ? o.expert_hidden() : o.mlp_hidden();
  d["expert_activation"] = to_string(o.expert_activation());
  d["expert_bias"] = o.expert_bias();
  d["shared_expert_hidden"] = o.shared_expert_hidden();
  d["shared_expert_gate"] = o.shared_expert_gate();
  // The router.
  d["gate"] = g.type();
  d["top_k"] = g.top_k();
  d["score_function"] = to_string(g.score_function());
  d["normalize_top_k_weights"] = g.normalize_top_k_weights();
  d["selection_bias"] = g.selection_bias();
  d["n_group"] = g.n_group();
  d["topk_group"] = g.topk_group();
  d["routed_scaling_factor"] = g.routed_scaling_factor();
  d["aux_loss_coef"] = g.aux_loss_coef();
  return d;
}

}  // namespace

void bind_hf(py::module_& m) {
  py::class_<hf::Checkpoint>(m, "_Checkpoint",
                             "A Hugging Face checkpoint directory's tensors (internal).")
      .def(py::init([](const std::string& dir) { return hf::Checkpoint::open(dir); }),
           py::arg("dir"))
      .def_property_readonly("dir", &hf::Checkpoint::dir)
      .def("names", &hf::Checkpoint::names, "The tensor names, sorted.")
      .def("__contains__", &hf::Checkpoint::contains, py::arg("name"))
      .def(
          "info",
          [](const hf::Checkpoint& c, const std::string& name) {
            const safetensors::TensorInfo& i = c.info(name);
            return py::make_tuple(py::reinterpret_borrow<py::object>(
                                      reinterpret_cast<PyObject*>(torch::getTHPDtype(i.dtype))),
                                  i.shape);
          },
          py::arg("name"), "(dtype, shape) of a tensor, read from the header.")
      .def("get", &hf::Checkpoint::get, py::arg("name"),
           "The tensor over the mapped file (CPU; do not write to it: clone what you keep).")
      .def("file_of", &hf::Checkpoint::file_of, py::arg("name"));
  m.def(
      "_safetensors_save",
      [](const std::string& path, const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
         const std::map<std::string, std::string>& metadata) {
        safetensors::save(path, tensors, metadata);
      },
      py::arg("path"), py::arg("tensors"),
      py::arg("metadata") = std::map<std::string, std::string>{},
      "Writes [(name, tensor)] as one .safetensors file (atomically).");

  m.def(
      "hf_config", [](const std::string& dir) { return config_dict(hf::read_config(dir)); },
      py::arg("dir"),
      R"(The model that dir/config.json describes (model_type mixtral, qwen2_moe, qwen3_moe,
olmoe or deepseek_v3), as hybridmoe reads it: a dict with family, dtype (a torch.dtype), the
sizes (vocab_size, context, d_model, n_layers, n_heads, n_kv_heads, head_dim, d_mlp), norms,
positions and attention options, where the MoE layers are (moe_every, first_k_dense,
mlp_only_layers, and their indices moe_layers) and what they hold (num_experts, expert_hidden,
shared_expert_hidden, ...), and the router (gate, top_k, score_function,
normalize_top_k_weights, n_group, topk_group, routed_scaling_factor, aux_loss_coef). Keys
absent from the file take the family's defaults. Raises hybridmoe.Error naming the file and the
key for anything hybridmoe cannot honour.)");
}

}  // namespace hybridmoe::python
