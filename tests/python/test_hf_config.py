# test_hf_config.py — hybridmoe.hf_config(dir) gives the model a config.json written here
# describes, as hybridmoe's reader (hf::read_config) understands it: the file's values, each
# family's defaults for the keys it leaves out, and refusals naming the file and the key.
import json

import pytest
import torch

import hybridmoe


def config(tmp_path, **keys):
    (tmp_path / "config.json").write_text(json.dumps(keys))
    return hybridmoe.hf_config(str(tmp_path))


def test_mixtral(tmp_path):
    c = config(tmp_path, model_type="mixtral", hidden_size=64, intermediate_size=96,
               num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, vocab_size=300,
               max_position_embeddings=128, num_local_experts=6, num_experts_per_tok=3,
               rms_norm_eps=1e-5, rope_theta=1e6, torch_dtype="bfloat16")
    expected = dict(family="mixtral", dtype=torch.bfloat16, d_model=64, n_layers=3, n_heads=4,
                    n_kv_heads=2, head_dim=16, d_mlp=96, vocab_size=300, context=128,
                    num_experts=6, top_k=3, expert_hidden=96, moe_layers=[0, 1, 2],
                    norm="rmsnorm", norm_eps=1e-5, position="rope", rope_theta=1e6,
                    attention="mha", expert_activation="swiglu", normalize_top_k_weights=True,
                    score_function="softmax", shared_expert_hidden=0, tie_embeddings=False)
    assert {k: c[k] for k in expected} == expected


def test_qwen2_moe_defaults_and_sparse_step(tmp_path):
    # Absent keys take Qwen2-MoE's defaults: norm_topk_prob false, q/k/v biases, a gated shared
    # expert, max_position_embeddings 32768, rms_norm_eps 1e-6, 4 experts per token.
    c = config(tmp_path, model_type="qwen2_moe", hidden_size=64, intermediate_size=128,
               moe_intermediate_size=32, shared_expert_intermediate_size=48, num_experts=4,
               num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
               decoder_sparse_step=2, vocab_size=256)
    expected = dict(family="qwen2_moe", dtype=torch.float32, context=32768, norm_eps=1e-6,
                    top_k=4, normalize_top_k_weights=False, qkv_bias=True, attn_out_bias=False,
                    shared_expert_hidden=48, shared_expert_gate=True, expert_hidden=32,
                    d_mlp=128, moe_every=2, moe_layers=[1, 3])
    assert {k: c[k] for k in expected} == expected


def test_deepseek_v3_latent_attention_and_grouped_router(tmp_path):
    c = config(tmp_path, model_type="deepseek_v3", hidden_size=64, num_attention_heads=4,
               num_key_value_heads=4, q_lora_rank=32, kv_lora_rank=16, qk_nope_head_dim=16,
               qk_rope_head_dim=8, v_head_dim=16, intermediate_size=128, moe_intermediate_size=32,
               n_routed_experts=8, n_shared_experts=2, n_group=4, topk_group=2,
               num_experts_per_tok=2, first_k_dense_replace=1, num_hidden_layers=3,
               vocab_size=256, max_position_embeddings=64, routed_scaling_factor=1.5)
    expected = dict(family="deepseek_v3", attention="mla", q_lora_rank=32, kv_lora_rank=16,
                    qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
                    rope_interleaved=True, first_k_dense=1, moe_layers=[1, 2], num_experts=8,
                    expert_hidden=32, shared_expert_hidden=64, score_function="sigmoid",
                    selection_bias=True, n_group=4, topk_group=2, routed_scaling_factor=1.5,
                    normalize_top_k_weights=True, top_k=2)
    assert {k: c[k] for k in expected} == expected


def test_unsupported_value_is_refused_by_key(tmp_path):
    with pytest.raises(hybridmoe.Error) as info:
        config(tmp_path, model_type="mixtral", hidden_act="gelu")
    assert str(info.value) == f'{tmp_path}/config.json: hidden_act "gelu" is not supported ' \
                              "(expected silu)"
