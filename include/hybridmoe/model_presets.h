// model_presets.h — the open MoE families as GPTOptions: each family's architecture and routing
// rules (taken from its Hugging Face modeling and configuration code) at a tiny size that trains
// in seconds on a CPU. Sizes are the caller's to change; the architecture options are what make
// the model that family.
#pragma once

#include <string>
#include <vector>

#include "hybridmoe/model_options.h"

namespace hybridmoe {

/// The model families hmoe builds: kGPT is the byte-level GPT of the examples (LayerNorm, learned
/// positions, GELU); the others are the open MoE families.
enum class ModelFamily { kGPT, kMixtral, kQwen2MoE, kQwen3MoE, kOLMoE, kDeepSeekV3 };
/// "gpt" | "mixtral" | "qwen2_moe" | "qwen3_moe" | "olmoe" | "deepseek_v3".
ModelFamily parse_model_family(const std::string& name);
std::string to_string(ModelFamily family);
/// The five MoE families (every family but kGPT), in the order above.
const std::vector<ModelFamily>& moe_families();

/// A tiny model of the family: d_model 64, 4 blocks, 4 heads, 8 experts, byte vocabulary,
/// context 64, and the family's architecture:
///   - mixtral: RMSNorm (1e-5), RoPE (theta 1e6), GQA (2 kv heads), no biases, SwiGLU experts,
///     softmax top-2 renormalized, every block MoE, untied head;
///   - qwen2_moe: RMSNorm (1e-6), RoPE, q/k/v biases (none on the output), softmax top-2 not
///     renormalized, a shared expert behind a sigmoid gate, SwiGLU dense MLP for mlp_only_layers;
///   - qwen3_moe: as qwen2_moe without biases or shared expert, GQA (2 kv heads), head_dim 32
///     (not d_model / heads), per-head q/k RMSNorm, top-2 renormalized (as the released models);
///   - olmoe: RMSNorm (1e-5), RoPE, q/k RMSNorm over the whole projections, softmax top-2 not
///     renormalized, balance loss 0.01;
///   - deepseek_v3: RMSNorm (1e-6), latent attention (q rank 32, kv rank 16, 16 + 8 rotated
///     dims per head, v 16) with interleaved RoPE, sigmoid scores with the selection bias and its
///     loss-free update, 4 groups keeping 2, top-2 renormalized and scaled by 2.5, an ungated
///     shared expert, the first block dense.
///
/// Example:
///   GPT model(model_preset(ModelFamily::kDeepSeekV3).n_layers(6));
GPTOptions model_preset(ModelFamily family);

}  // namespace hybridmoe
