"""Tiny random models of every supported MoE family, and a small byte-level BPE tokenizer trained on the spot."""

from __future__ import annotations

import functools
import os
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

VOCAB_SIZE = 384
SAMPLE_TEXT = (
    "Mixture-of-Experts language models route every token to a few experts chosen by a learned router. "
    "Pruning removes the experts that matter least, so the model needs less memory while it keeps most of its "
    "quality. def route(tokens, experts, k=2):\n    return sorted(experts, key=score)[:k]\n"
    "The quick brown fox jumps over the lazy dog; 0123456789 + - * / = ( ) [ ] { } < > ! ? : ; , .\n"
)

# Family-specific keyword arguments on top of the common tiny shape. Each family's expert-count key differs.
TINY_FAMILIES: dict[str, dict[str, Any]] = {
    "qwen3_moe": {"num_experts": 8, "moe_intermediate_size": 16, "norm_topk_prob": True, "head_dim": 8},
    "qwen2_moe": {
        "num_experts": 8,
        "moe_intermediate_size": 16,
        "shared_expert_intermediate_size": 24,
        "norm_topk_prob": False,
    },
    "mixtral": {"num_local_experts": 8, "head_dim": 8},
    "olmoe": {"num_experts": 8, "norm_topk_prob": False},
}


def tiny_config(model_type: str, **overrides):
    """A tiny config of `model_type`: hidden 32, 2 layers, 8 experts, top-2, vocabulary of `tiny_tokenizer()`."""
    if model_type not in TINY_FAMILIES:
        raise ValueError(f"No tiny config for {model_type!r}; known: {sorted(TINY_FAMILIES)}")
    kwargs = {
        "vocab_size": VOCAB_SIZE,
        "hidden_size": 32,
        "intermediate_size": 16,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_experts_per_tok": 2,
        "max_position_embeddings": 256,
        "tie_word_embeddings": False,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "pad_token_id": 0,
        **TINY_FAMILIES[model_type],
        **overrides,
    }
    return AutoConfig.for_model(model_type, **kwargs)


def tiny_model(model_type: str, seed: int = 0, router_scale: float = 20.0, **overrides) -> torch.nn.Module:
    """A tiny random `*ForCausalLM` of `model_type` in eval mode.

    Router weights are scaled up by `router_scale` so that routing is decisive (as in trained models) instead of the
    near-uniform routing of a 0.02-std random init, which would make every expert look alike.
    """
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, **overrides))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith((".gate.weight", ".router.weight")):
                param.mul_(router_scale)
    return model.eval()


@functools.lru_cache(maxsize=1)
def _tokenizer_object():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([SAMPLE_TEXT] * 4, trainer=trainer)
    return tokenizer.to_str()


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (vocabulary ≤ 384, `<|endoftext|>` = id 0) trained offline on `SAMPLE_TEXT`."""
    from tokenizers import Tokenizer

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_object()),
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_input_names=["input_ids", "attention_mask"],
    )


def save_tiny_model(model_type: str, path: str | os.PathLike, seed: int = 0, **overrides) -> str:
    """Save a tiny model and its tokenizer to `path` (a checkpoint folder like a Hub download) and return the path."""
    tiny_model(model_type, seed=seed, **overrides).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return str(path)
