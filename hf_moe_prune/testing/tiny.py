"""Tiny random models of every supported MoE family, and a small byte-level BPE tokenizer trained on the spot."""

from __future__ import annotations

import functools
import os

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoModelForSeq2SeqLM,
    PreTrainedTokenizerFast,
)

from hf_moe_prune.testing.tiny_configs import PARENTS, VOCAB_SIZE, tiny_kwargs

SAMPLE_TEXT = (
    "Mixture-of-Experts language models route every token to a few experts chosen by a learned router. "
    "Pruning removes the experts that matter least, so the model needs less memory while it keeps most of its "
    "quality. def route(tokens, experts, k=2):\n    return sorted(experts, key=score)[:k]\n"
    "The quick brown fox jumps over the lazy dog; 0123456789 + - * / = ( ) [ ] { } < > ! ? : ; , .\n"
)

# The four families the heavier tests run on (save/reload in a subprocess, every method, the quantizer paths);
# every other supported family gets the shared family test (tests/test_families.py).
TINY_FAMILIES = ("mixtral", "olmoe", "qwen2_moe", "qwen3_moe")


def tiny_config(model_type: str, **overrides):
    """A tiny config of `model_type`: hidden 32, 2 MoE layers of 8 experts, top-2, vocabulary of `tiny_tokenizer()`."""
    from hf_moe_prune.adapters import ADAPTERS

    if model_type not in ADAPTERS:
        raise ValueError(f"No adapter for {model_type!r}; supported: {', '.join(ADAPTERS.names())}")
    kwargs = {**tiny_kwargs(model_type), **overrides}
    if model_type in PARENTS:  # a text decoder only registered inside its multimodal parent
        parent, sub_configs = PARENTS[model_type]
        return AutoConfig.for_model(parent, text_config=kwargs, **sub_configs)
    return AutoConfig.for_model(model_type, **kwargs)


def tiny_model(model_type: str, seed: int = 0, router_scale: float = 20.0, **overrides) -> torch.nn.Module:
    """A tiny random model of `model_type` (`*ForCausalLM` when the family has one, the multimodal parent's
    `*ForConditionalGeneration` for `PARENTS` families, the seq2seq LM of encoder-decoder families) in eval mode.

    Router weights are scaled up by `router_scale` so that routing is decisive (as in trained models) instead of the
    near-uniform routing of a 0.02-std random init, which would make every expert look alike.
    """
    from hf_moe_prune.adapters import find_blocks

    torch.manual_seed(seed)
    config = tiny_config(model_type, **overrides)
    if model_type in PARENTS:
        model = AutoModelForImageTextToText.from_config(config)
    elif config.is_encoder_decoder:
        model = AutoModelForSeq2SeqLM.from_config(config)
    else:
        try:
            model = AutoModelForCausalLM.from_config(config)
        except ValueError:  # a few families only have a base model class
            model = AutoModel.from_config(config)
    try:
        blocks = find_blocks(model)
    except ValueError:  # all layers dense (a test of exactly that case)
        blocks = []
    with torch.no_grad():
        for block in blocks:
            weight = block.router_weight
            if not weight.any():  # some families initialise the router at zero: every expert would tie
                weight.normal_(0.0, 0.02)
            weight.mul_(router_scale)
            table = getattr(block.router, "tid2eid", None)  # DeepSeek-V4's hash routing: a token -> experts table
            if block.fixed_routing and isinstance(table, torch.Tensor) and not table.any():
                # initialised at zero (every token to expert 0): give each token top-k distinct random experts
                table.copy_(torch.rand(table.shape[0], block.num_experts).argsort(-1)[:, : table.shape[1]])
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
