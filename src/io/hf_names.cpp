// hf_names.cpp — see hf_names.h: the Hugging Face tensor names of each family's parameters.
#include "io/hf_names.h"

#include <set>
#include <sstream>

namespace hybridmoe::hf::detail {

torch::Tensor Piece::view(const torch::Tensor& source) const {
  torch::Tensor v = narrow_dim >= 0 ? source.narrow(narrow_dim, start, length) : source;
  return transpose ? v.transpose(-1, -2) : v;
}

namespace {

std::vector<int64_t> sizes_of(const torch::Tensor& t) {
  return t.sizes().vec();
}
std::vector<int64_t> swapped(std::vector<int64_t> s) {
  std::swap(s[s.size() - 1], s[s.size() - 2]);
  return s;
}

// Builds the map while walking the model's parameters.
class Builder {
 public:
  explicit Builder(NameMap& m) : m_(m) {}

  void note(const std::string& tensor, std::vector<int64_t> shape) {
    if (!m_.shapes.count(tensor)) m_.order.push_back(tensor);
    m_.shapes[tensor] = std::move(shape);
  }
  // The parameter is the tensor itself.
  void same(const std::string& param, const torch::Tensor& p, const std::string& tensor,
            bool buffer = false) {
    note(tensor, sizes_of(p));
    m_.targets.push_back({param, buffer, false, {Piece{tensor}}});
  }
  // [E, a, b] from E tensors [b, a] (per-expert Linear weights); E = 1 for a shared expert.
  void stacked_transposed(const std::string& param, const torch::Tensor& p,
                          const std::vector<std::string>& tensors) {
    Target t{param, false, true, {}};
    for (const auto& name : tensors) {
      note(name, swapped(sizes_of(p[0])));
      Piece piece{name};
      piece.transpose = true;
      t.pieces.push_back(piece);
    }
    m_.targets.push_back(t);
  }
  // [E, a, b] as rows [start, start + b) of dimension 1 of a tensor [E, total, a], transposed.
  void fused(const std::string& param, const torch::Tensor& p, const std::string& tensor,
             int64_t start, int64_t total) {
    note(tensor, {p.size(0), total, p.size(1)});
    Piece piece{tensor, 1, start, p.size(2), true};
    m_.targets.push_back({param, false, false, {piece}});
  }

 private:
  NameMap& m_;
};

}  // namespace

Naming detect_naming(const std::vector<std::string>& names, ModelFamily family) {
  Naming n;
  n.mixtral_block_sparse = false;
  for (const auto& name : names) {
    if (name.find(".experts.gate_up_proj") != std::string::npos) n.layout = ExpertLayout::kFused;
    if (family == ModelFamily::kMixtral && name.find(".block_sparse_moe.") != std::string::npos)
      n.mixtral_block_sparse = true;
  }
  return n;
}

NameMap name_map(torch::nn::Module& model, const GPTOptions& o, ModelFamily family,
                 const Naming& naming) {
  NameMap m;
  Builder b(m);
  const bool mixtral = family == ModelFamily::kMixtral;
  std::set<std::string> unmapped;
  auto params = model.named_parameters();
  auto buffers = model.named_buffers();
  for (const auto& kv : params) unmapped.insert(kv.key());
  auto take = [&](const std::string& name) -> torch::Tensor {
    unmapped.erase(name);
    return params[name];
  };
  auto has = [&](const std::string& name) { return params.contains(name); };

  b.same("tok_emb.weight", take("tok_emb.weight"), "model.embed_tokens.weight");
  for (int64_t i = 0; i < o.n_layers(); ++i) {
    const std::string ours = "blocks." + std::to_string(i) + ".";
    const std::string hf = "model.layers." + std::to_string(i) + ".";
    b.same(ours + "ln1.weight", take(ours + "ln1.weight"), hf + "input_layernorm.weight");
    b.same(ours + "ln2.weight", take(ours + "ln2.weight"), hf + "post_attention_layernorm.weight");
    // 1. Attention: the same names, but for the latent attention's norms and kv_a.
    static const std::vector<std::pair<std::string, std::string>> kAttention = {
        {"q_proj", "q_proj"},
        {"k_proj", "k_proj"},
        {"v_proj", "v_proj"},
        {"o_proj", "o_proj"},
        {"q_norm", "q_norm"},
        {"k_norm", "k_norm"},
        {"q_a_proj", "q_a_proj"},
        {"q_a_norm", "q_a_layernorm"},
        {"q_b_proj", "q_b_proj"},
        {"kv_a_proj", "kv_a_proj_with_mqa"},
        {"kv_a_norm", "kv_a_layernorm"},
        {"kv_b_proj", "kv_b_proj"}};
    for (const auto& [mine, theirs] : kAttention)
      for (const char* leaf : {".weight", ".bias"}) {
        const std::string p = ours + "attn." + mine + leaf;
        if (has(p)) b.same(p, take(p), hf + "self_attn." + theirs + leaf);
      }
    // 2. A dense MLP.
    for (const auto& [mine, theirs] : std::vector<std::pair<std::string, std::string>>{
             {"fc1", "gate_proj"}, {"fc3", "up_proj"}, {"fc2", "down_proj"}})
      for (const char* leaf : {".weight", ".bias"}) {
        const std::string p = ours + "mlp." + mine + leaf;
        if (has(p)) b.same(p, take(p), hf + "mlp." + theirs + leaf);
      }
    if (!has(ours + "moe.gate.weight")) continue;
    // 3. The MoE block: router, its selection bias, routed experts, shared expert and its gate.
    const std::string moe =
        hf + (mixtral && naming.mixtral_block_sparse ? "block_sparse_moe." : "mlp.");
    b.same(ours + "moe.gate.weight", take(ours + "moe.gate.weight"), moe + "gate.weight");
    if (o.gate().selection_bias())
      b.same(ours + "moe.gate.expert_bias", buffers[ours + "moe.gate.expert_bias"],
             moe + "gate.e_score_correction_bias", /*buffer=*/true);
    const int64_t E = o.num_experts();
    const auto w1 = take(ours + "moe.experts.w1"), w2 = take(ours + "moe.experts.w2"),
               w3 = take(ours + "moe.experts.w3");
    if (naming.layout == ExpertLayout::kFused) {
      const int64_t h = w1.size(2);
      b.fused(ours + "moe.experts.w1", w1, moe + "experts.gate_up_proj", 0, 2 * h);
      b.fused(ours + "moe.experts.w3", w3, moe + "experts.gate_up_proj", h, 2 * h);
      // down_proj [E, H, I] is w2 [E, I, H] transposed.
      b.note(moe + "experts.down_proj", swapped(sizes_of(w2)));
      Piece down{moe + "experts.down_proj"};
      down.transpose = true;
      m.targets.push_back({ours + "moe.experts.w2", false, false, {down}});
    } else {
      std::vector<std::string> gate, up, down;
      for (int64_t e = 0; e < E; ++e) {
        const std::string x = moe + "experts." + std::to_string(e) + ".";
        gate.push_back(x + (mixtral ? "w1" : "gate_proj") + ".weight");
        up.push_back(x + (mixtral ? "w3" : "up_proj") + ".weight");
        down.push_back(x + (mixtral ? "w2" : "down_proj") + ".weight");
      }
      b.stacked_transposed(ours + "moe.experts.w1", w1, gate);
      b.stacked_transposed(ours + "moe.experts.w3", w3, up);
      b.stacked_transposed(ours + "moe.experts.w2", w2, down);
    }
    if (has(ours + "moe.shared_expert.w1")) {
      const std::string s =
          moe + (family == ModelFamily::kDeepSeekV3 ? "shared_experts." : "shared_expert.");
      b.stacked_transposed(ours + "moe.shared_expert.w1", take(ours + "moe.shared_expert.w1"),
                           {s + "gate_proj.weight"});
      b.stacked_transposed(ours + "moe.shared_expert.w3", take(ours + "moe.shared_expert.w3"),
                           {s + "up_proj.weight"});
      b.stacked_transposed(ours + "moe.shared_expert.w2", take(ours + "moe.shared_expert.w2"),
                           {s + "down_proj.weight"});
    }
    if (has(ours + "moe.shared_expert_gate"))
      b.same(ours + "moe.shared_expert_gate", take(ours + "moe.shared_expert_gate"),
             moe + "shared_expert_gate.weight");
  }
  b.same("ln_f.weight", take("ln_f.weight"), "model.norm.weight");
  if (has("lm_head.weight")) b.same("lm_head.weight", take("lm_head.weight"), "lm_head.weight");
  std::ostringstream list;
  for (const auto& n : unmapped) list << " " << n;
  TORCH_CHECK(unmapped.empty(), "hf: a ", to_string(family),
              " checkpoint has no tensor for these parameters of the model:", list.str(),
              " (options the family does not have, e.g. biases of experts or MLPs?)");
  return m;
}

}  // namespace hybridmoe::hf::detail
