"""Tiny configs for every supported family, derived from each config class's own keys (no per-family boilerplate).

A key is set only when the family's config has it, so one table shrinks MLA attention (DeepSeek), grouped routing,
shared experts and hybrid layer schedules alike; `FAMILY_OVERRIDES` holds what a family needs beyond that.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig

from hf_moe_prune.families import COUNT_KEYS

VOCAB_SIZE = 384
TOP_K_KEYS = ("num_experts_per_tok", "moe_k", "moe_topk", "num_experts_per_token", "moe_top_k")
TOP_K = 2

COMMON: dict[str, Any] = {
    "vocab_size": VOCAB_SIZE,
    "unpadded_vocab_size": VOCAB_SIZE,  # inkling2 (transformers >= 5.24) pads the LM head from this size
    "hidden_size": 32,
    "intermediate_size": 32,
    "moe_intermediate_size": 16,
    "shared_expert_intermediate_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "max_position_embeddings": 256,
    "tie_word_embeddings": False,
    "bos_token_id": 0,
    "eos_token_id": 0,
    "pad_token_id": 0,
    # DeepSeek-style multi-head latent attention
    "kv_lora_rank": 16,
    "q_lora_rank": 16,
    "qk_rope_head_dim": 8,
    "qk_nope_head_dim": 8,
    "v_head_dim": 8,
    # grouped routing, shared experts, dense first layers
    "n_group": 2,
    "topk_group": 1,
    "n_shared_experts": 1,
    "first_k_dense_replace": 1,
    "moe_layer_start_index": 1,
    "decoder_sparse_step": 1,
    "mlp_only_layers": [],
    "num_nextn_predict_layers": 0,
    "sliding_window": 64,
}

# Families whose first layer is dense get a third layer so that two MoE layers remain.
_DENSE_FIRST = ("first_k_dense_replace", "moe_layer_start_index")

FAMILY_OVERRIDES: dict[str, dict[str, Any]] = {
    "jetmoe": {"kv_channels": 8, "intermediate_size": 16},
    "switch_transformers": {  # an encoder and a decoder of 2 layers each, every feed-forward layer sparse
        "d_model": 32,
        "d_ff": 16,
        "d_kv": 8,
        "num_heads": 4,
        "num_layers": 2,
        "num_decoder_layers": 2,
        "num_sparse_encoder_layers": 2,
        "num_sparse_decoder_layers": 2,
        "router_jitter_noise": 0.0,
        "decoder_start_token_id": 0,
    },
    "qwen3_moe": {"norm_topk_prob": True, "intermediate_size": 16},
    "qwen2_moe": {"shared_expert_intermediate_size": 24, "norm_topk_prob": False, "intermediate_size": 16},
    "olmoe": {"norm_topk_prob": False, "intermediate_size": 16},
    "mixtral": {"intermediate_size": 16},
    "dots3_note_text": {"num_key_value_heads": 4},
    "dbrx": {
        "d_model": 32,
        "n_heads": 4,
        "n_layers": 2,
        "attn_config": {"kv_n_heads": 2, "rope_theta": 10000.0, "clip_qkv": 8.0},
        "ffn_config": {"ffn_hidden_size": 16, "moe_num_experts": 8, "moe_top_k": 2, "hidden_size": 32},
    },
    "jamba": {
        "attn_layer_period": 2,
        "attn_layer_offset": 1,
        "expert_layer_period": 1,
        "expert_layer_offset": 0,
        "use_mamba_kernels": False,
        "mamba_dt_rank": 8,
        "mamba_d_state": 8,
    },
    "granitemoehybrid": {
        "mamba_n_heads": 8,
        "mamba_d_head": 8,
        "mamba_d_state": 16,
        "mamba_chunk_size": 16,
        "layer_types": ["mamba", "attention"],
    },
    "lfm2_moe": {
        "num_dense_layers": 1,
        "num_hidden_layers": 3,
        "layer_types": ["conv", "full_attention", "full_attention"],
    },
    "beam": {
        "num_hidden_layers": 3,
        "mlp_layer_types": ["dense", "sparse", "sparse"],
        "layer_types": ["sliding_attention", "sliding_attention", "full_attention"],
    },
    "mistral4": {"qk_head_dim": 16, "head_dim": 16},
    # DSA attention layers are NoPE (no rotary dims); KDA linear attention, then the indexed (DSA) layer
    "glm5_next_text": {
        "num_key_value_heads": 4,
        "qk_rope_head_dim": 0,
        "qk_nope_head_dim": 16,
        "index_topk": 16,
        "index_kpool": 16,
        "index_head_dim": 8,
        "index_n_heads": 2,
        "linear_head_dim": 8,
        "linear_num_heads": 4,
        "hc_mult": 2,
        "num_hidden_layers": 3,
        "mlp_layer_types": ["dense", "sparse", "sparse"],
        "layer_types": ["linear_attention", "linear_attention", "indexed_attention"],
    },
    # head_dim 16 with partial rotary 0.5: 4 rotary frequencies, split over the 3 mrope axes (temporal, h, w)
    "glm4v_moe_text": {
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]},
    },
    "gemma4_text": {  # the MoE variant (26B-A4B): experts beside the dense MLP of every layer
        "enable_moe_block": True,
        "top_k_experts": 2,
        "global_head_dim": 16,
        "hidden_size_per_layer_input": 0,
        "vocab_size_per_layer_input": VOCAB_SIZE,
    },
    "inkling_text": {"swa_num_attention_heads": 4, "swa_num_key_value_heads": 2, "swa_head_dim": 8, "d_rel": 4},
    # `num_layers` decoder layers of two attention sublayers and one MoE each; 2 zero (identity) experts
    "longcat_flash": {"num_layers": 2, "zero_expert_num": 2},
    # ZaYA's config accepts top-1 routing only
    "zaya": {"num_experts_per_tok": 1, "router_hidden_size": 16},
    # one hash-routed layer (experts from a fixed `tid2eid` table: kept whole), then two top-k layers; sliding-window,
    # compressed-sparse (with its indexer) and heavily-compressed attention; 2 hyper-connection streams
    "deepseek_v4": {
        "intermediate_size": 16,  # an alias of `moe_intermediate_size` here
        "num_key_value_heads": 1,
        "head_dim": 16,
        "qk_rope_head_dim": 8,
        "num_hidden_layers": 3,
        "mlp_layer_types": ["hash_moe", "moe", "moe"],
        "layer_types": ["sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention"],
        "compress_rates": {"compressed_sparse_attention": 4, "heavily_compressed_attention": 8},
        "sliding_window": 8,
        "o_groups": 2,
        "o_lora_rank": 16,
        "index_n_heads": 2,
        "index_head_dim": 8,
        "index_topk": 4,
        "hc_mult": 2,
        "hc_sinkhorn_iters": 3,
    },
    # DeepSeek-OCR-2 / Unlimited-OCR: DeepSeek-V2 MoE without latent attention, dense layers from `mlp_layer_types`
    "deepseek_ocr2_text": {"num_hidden_layers": 3, "mlp_layer_types": ["dense", "sparse", "sparse"]},
    "unlimited_ocr_text": {
        "num_hidden_layers": 3,
        "mlp_layer_types": ["dense", "sparse", "sparse"],
        "layer_types": ["reference_sliding_attention"] * 3,
        "sliding_window": 8,
    },
    # Hy4-VL's text decoder: a dense first layer, MLA with an indexer; mrope over the 8 rotary dims (4 frequencies)
    "hy_v4_vl_text": {
        "num_hidden_layers": 3,
        "mlp_layer_types": ["dense", "sparse", "sparse"],
        "layer_types": ["indexed_attention"] * 3,
        "index_topk": 16,
        "index_head_dim": 8,
        "index_n_heads": 2,
        "hc_mult": 2,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]},
    },
    # Qwen4-Exp: a GatedDeltaNet layer, then an indexed-attention layer; 2 hyper-connection streams, no PLE
    "qwen4_exp_text": {
        "linear_key_head_dim": 8,
        "linear_value_head_dim": 8,
        "linear_num_key_heads": 2,
        "linear_num_value_heads": 4,
        "hc_count": 2,
        "hc_lowrank": 8,
        "indexer_n_heads": 2,
        "indexer_kv_heads": 1,
        "indexer_head_dim": 8,
        "indexer_budget": 8,
        "indexer_compress_ratio": 4,
    },
    # ERNIE-4.5-VL: text and vision expert groups of different widths, a dense first layer
    "ernie4_5_vl_moe_text": {
        "num_hidden_layers": 3,
        "mlp_layer_types": ["dense", "sparse", "sparse"],
        "moe_intermediate_size": [16, 8],
        "moe_num_shared_experts": 1,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]},
    },
    "step3p5": {  # Step-3.7-Flash's text decoder: dense first layers, sliding/full attention
        "num_hidden_layers": 3,
        "mlp_layer_types": ["dense", "sparse", "sparse"],
        "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
    },
}


# Text decoders whose `model_type` has no config registered on its own (only as the `text_config` of a multimodal
# model): the tiny model is the parent with a tiny text config and these tiny sub-configs.
# SAM-style vision towers of the two OCR families: one windowed layer, tiny convolutional neck and downsampler.
_TINY_SAM = {
    "hidden_size": 16,
    "output_channels": 16,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "image_size": 64,
    "patch_size": 16,
    "window_size": 2,
    "global_attn_indexes": [0],
    "mlp_dim": 32,
    "downsample_channels": [16, 32],
}

PARENTS: dict[str, tuple[str, dict[str, Any]]] = {
    "deepseek_ocr2_text": (
        "deepseek_ocr2",
        {
            "vision_config": {
                "sam_config": _TINY_SAM,
                "encoder_config": {
                    "vocab_size": 16,
                    "hidden_size": 32,
                    "intermediate_size": 32,
                    "num_hidden_layers": 1,
                    "num_attention_heads": 2,
                    "num_key_value_heads": 2,
                    "max_position_embeddings": 64,
                },
            }
        },
    ),
    "unlimited_ocr_text": (
        "unlimited_ocr",
        {
            "vision_config": {
                "sam_config": _TINY_SAM,
                "encoder_config": {
                    "hidden_size": 32,
                    "intermediate_size": 32,
                    "num_hidden_layers": 1,
                    "num_attention_heads": 2,
                    "image_size": 28,
                    "patch_size": 14,
                },
            }
        },
    ),
    "hy_v4_vl_text": (
        "hy_v4_vl",
        {
            "vision_config": {
                "hidden_size": 16,
                "intermediate_size": 32,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "out_hidden_size": 32,
                "patch_size": 14,
                "max_image_size": 56,
            }
        },
    ),
    "ernie4_5_vl_moe_text": (
        "ernie4_5_vl_moe",
        {
            "vision_config": {
                "depth": 1,
                "hidden_size": 16,
                "intermediate_size": 32,
                "num_heads": 2,
                "patch_size": 14,
            }
        },
    ),
    "qwen3_omni_moe_text": (
        "qwen3_omni_moe_thinker",
        {
            "audio_config": {
                "num_mel_bins": 16,
                "encoder_layers": 1,
                "encoder_attention_heads": 2,
                "encoder_ffn_dim": 32,
                "d_model": 16,
                "output_dim": 32,
                "downsample_hidden_size": 8,
                "max_source_positions": 64,
            },
            "vision_config": {
                "depth": 1,
                "hidden_size": 16,
                "intermediate_size": 32,
                "num_heads": 2,
                "out_hidden_size": 32,
                "num_position_embeddings": 64,
                "deepstack_visual_indexes": [],
            },
            # read by the thinker's `get_rope_index` in generate() but not declared by its config (transformers 5.24);
            # Qwen3-Omni checkpoints carry it in `thinker_config`
            "vision_start_token_id": 151652,
        },
    ),
    "step3p5": (
        "step3p7",
        {
            "vision_config": {
                "hidden_size": 16,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "image_size": 28,
                "patch_size": 14,
                "mlp_ratio": 2.0,
                "max_position_embeddings": 4,
            }
        },
    ),
}


def base_config(model_type: str):
    """The default config of `model_type` (the text decoder's, for multimodal and `PARENTS` families)."""
    if model_type in PARENTS:
        return AutoConfig.for_model(PARENTS[model_type][0]).text_config
    config = AutoConfig.for_model(model_type)
    return getattr(config, "text_config", None) or config


def _has(config, key: str) -> bool:
    return key in config.to_dict() or key in getattr(type(config), "attribute_map", {})


def tiny_kwargs(model_type: str) -> dict[str, Any]:
    """Keyword arguments that shrink `model_type`'s default config to a few thousand parameters per layer."""
    config = base_config(model_type)
    kwargs = {k: v for k, v in COMMON.items() if _has(config, k)}
    kwargs.update({k: 8 for k in COUNT_KEYS if _has(config, k)})
    kwargs.update({k: TOP_K for k in TOP_K_KEYS if _has(config, k)})
    if "kv_lora_rank" in kwargs:  # latent attention expands keys per head: no grouped-query sharing
        kwargs["num_key_value_heads"] = kwargs.get("num_attention_heads", 4)
    if any(_has(config, k) for k in _DENSE_FIRST):
        kwargs["num_hidden_layers"] = 3
    layer_types = config.to_dict().get("layer_types")
    if layer_types:  # hybrid models: keep the family's schedule but end on a full-attention layer
        full = next((t for t in layer_types if "full" in t or t == "attention"), layer_types[-1])
        n = kwargs.get("num_hidden_layers", 2)
        kwargs["layer_types"] = [*layer_types[: n - 1], full]
    kwargs.update(FAMILY_OVERRIDES.get(model_type, {}))
    return kwargs


def tiny_top_k(model_type: str) -> int:
    """The top-k of `model_type`'s tiny model: `TOP_K`, unless its config accepts only another (ZaYA: top-1) or
    the family routes to a fixed number of experts (Switch Transformers: top-1)."""
    from hf_moe_prune.adapters import ADAPTERS

    overrides = FAMILY_OVERRIDES.get(model_type, {})
    fixed = ADAPTERS.get(model_type).top_k if model_type in ADAPTERS else 0
    return fixed or next((overrides[k] for k in TOP_K_KEYS if k in overrides), TOP_K)
