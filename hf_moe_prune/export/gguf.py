"""GGUF export of uniformly pruned checkpoints, for llama.cpp and the tools built on it.

`export_gguf(folder, "model.gguf")` (CLI: `hf-moe-prune export-gguf FOLDER --output model.gguf`) writes the saved
checkpoint with the `gguf` package: the architecture's metadata (the expert count is the pruned one), the GPT-2 style
BPE tokenizer (tokens, types, merges, special tokens) and every tensor under llama.cpp's name (`gguf.TensorNameMap`),
the fused `gate_up_proj` of transformers 5 split into `ffn_gate_exps` / `ffn_up_exps`. Families: the ones whose
tensors need no reordering for llama.cpp's rotary embedding (NeoX style), listed in `GGUF_ARCHITECTURES`; other
families are refused with the name of llama.cpp's own converter (`convert_hf_to_gguf.py`), which converts them.
Non-uniform checkpoints (per-layer counts, neuron widths) are refused: llama.cpp has one expert count per model.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from hf_moe_prune.export.portable import is_marked, is_pruned_config

# model_type -> (llama.cpp architecture, tokenizer pre-tokenizer name)
GGUF_ARCHITECTURES = {
    "qwen3_moe": ("qwen3moe", "qwen2"),
    "qwen2_moe": ("qwen2moe", "qwen2"),
    "olmoe": ("olmoe", "olmo"),
}


def _config(folder: Path) -> dict[str, Any]:
    config = json.loads((folder / "config.json").read_text())
    if is_marked(config) or is_pruned_config(config):  # how every non-uniform checkpoint is saved
        raise ValueError(
            f"{folder} is not a uniform checkpoint (its layers keep different numbers or widths of experts): "
            "llama.cpp has one expert count per model. Prune with portable=True to export it."
        )
    if config.get("model_type") not in GGUF_ARCHITECTURES:
        raise ValueError(
            f"GGUF export here covers {sorted(GGUF_ARCHITECTURES)}; for {config.get('model_type')!r} run llama.cpp's "
            "convert_hf_to_gguf.py on the saved folder (uniform checkpoints are stock, it reads them as any other)."
        )
    return config


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"No safetensors weights in {folder}.")
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        tensors.update(load_file(str(file)))
    return tensors


def _stack_experts(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-expert tensors (`...experts.{e}.down_proj.weight`, as transformers saves fused experts for older readers)
    stacked into `[E, out, in]` (`...experts.down_proj`), the layout llama.cpp's `*_exps` tensors have."""
    grouped: dict[str, dict[int, torch.Tensor]] = {}
    out = {}
    for name, tensor in tensors.items():
        match = re.fullmatch(r"(.*\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight", name)
        if match is None:
            out[name] = tensor
            continue
        grouped.setdefault(f"{match.group(1)}.{match.group(3)}", {})[int(match.group(2))] = tensor
    for name, experts in grouped.items():
        if sorted(experts) != list(range(len(experts))):
            raise ValueError(f"{name}: experts {sorted(experts)} are not numbered 0..{len(experts) - 1}.")
        out[name] = torch.stack([experts[e] for e in range(len(experts))])
    return out


def _split_gate_up(name: str, tensor: torch.Tensor, width: int) -> list[tuple[str, torch.Tensor]]:
    """transformers 5 fuses gate and up projections `[E, 2I, H]` (gate rows first); llama.cpp stores them apart."""
    if tensor.shape[1] != 2 * width:
        raise ValueError(f"{name}: expected [experts, 2 x {width}, hidden], got {tuple(tensor.shape)}.")
    base = name.removesuffix("gate_up_proj")
    return [(base + "gate_proj", tensor[:, :width]), (base + "up_proj", tensor[:, width:])]


def _metadata(writer, config: dict[str, Any], arch: str) -> None:
    text = config.get("text_config") or config
    heads = text["num_attention_heads"]
    head_dim = text.get("head_dim") or text["hidden_size"] // heads
    rope = (text.get("rope_parameters") or {}).get("rope_theta") or text.get("rope_theta") or 10000.0
    width = text.get("moe_intermediate_size") or text["intermediate_size"]
    writer.add_block_count(text["num_hidden_layers"])
    writer.add_context_length(text.get("max_position_embeddings", 4096))
    writer.add_embedding_length(text["hidden_size"])
    writer.add_feed_forward_length(text["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(text.get("num_key_value_heads") or heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_freq_base(float(rope))
    writer.add_layer_norm_rms_eps(float(text.get("rms_norm_eps", 1e-6)))
    writer.add_expert_count(text["num_experts"])
    writer.add_expert_used_count(text["num_experts_per_tok"])
    writer.add_expert_feed_forward_length(width)
    if text.get("shared_expert_intermediate_size"):
        writer.add_expert_shared_feed_forward_length(text["shared_expert_intermediate_size"])


def _vocabulary(writer, folder: Path, vocab_size: int, pre: str) -> None:
    import gguf

    if not (folder / "tokenizer.json").is_file() and not (folder / "vocab.json").is_file():
        raise FileNotFoundError(
            f"{folder} holds no tokenizer (tokenizer.json): save the model with it, "
            "model.save_pretrained(dir, tokenizer=tok), or copy the original model's tokenizer files there."
        )
    try:
        vocab = gguf.BpeVocab(folder)  # GPT-2 style byte-level BPE, as the supported families use
    except FileNotFoundError as error:
        raise ValueError(f"{folder}: the tokenizer is not a byte-level BPE tokenizer ({error}).") from None
    tokens, types = [], []
    for text, _, kind in vocab.all_tokens():
        tokens.append(text if isinstance(text, bytes) else str(text).encode())
        types.append(kind)
    if len(tokens) > vocab_size:
        raise ValueError(f"The tokenizer has {len(tokens)} tokens, more than the model's {vocab_size} embeddings.")
    for i in range(len(tokens), vocab_size):  # embedding rows no token uses, as llama.cpp's converter pads them
        tokens.append(f"[PAD{i}]".encode())
        types.append(gguf.TokenType.UNUSED)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    gguf.SpecialVocab(folder, load_merges=True, n_vocab=vocab_size).add_to_gguf(writer)


def export_gguf(folder: str | os.PathLike, output: str | os.PathLike, dtype: str = "f16") -> dict[str, Any]:
    """Write the uniformly pruned checkpoint in `folder` as one GGUF file.

    Args:
        folder (`str` or `os.PathLike`): A saved checkpoint (weights, config, tokenizer) of a family in
            `GGUF_ARCHITECTURES`, pruned uniformly (or not pruned).
        output (`str` or `os.PathLike`): The `.gguf` file to write (its folder must exist; never overwritten).
        dtype (`str`, *optional*, defaults to `"f16"`): `"f16"` or `"f32"` for matrices; norms, biases and routers
            stay float32, as llama.cpp's converter keeps them.

    Returns:
        `dict`: architecture, expert count and used count, tensors written, bytes.

    Raises:
        `ValueError`: a non-uniform checkpoint, a family not covered here (use llama.cpp's converter), a tokenizer
            that is not byte-level BPE. `FileExistsError`: `output` exists.
    """
    import gguf

    folder, output = Path(folder), Path(output)
    if dtype not in ("f16", "f32"):
        raise ValueError(f"dtype must be 'f16' or 'f32', got {dtype!r}.")
    if output.exists():
        raise FileExistsError(f"{output} exists; nothing was written. Choose a new file name.")
    config = _config(folder)
    arch, pre = GGUF_ARCHITECTURES[config["model_type"]]
    text = config.get("text_config") or config
    width = text.get("moe_intermediate_size") or text["intermediate_size"]
    model_arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch)
    names = gguf.get_tensor_name_map(model_arch, text["num_hidden_layers"])
    pending: list[tuple[str, torch.Tensor]] = []
    for name, tensor in _stack_experts(_tensors(folder)).items():
        pending += _split_gate_up(name, tensor, width) if name.endswith("experts.gate_up_proj") else [(name, tensor)]
    tmp = output.with_name(f".{output.name}.tmp")
    writer = gguf.GGUFWriter(str(tmp), arch)
    try:
        writer.add_name(config.get("_name_or_path") or folder.name)
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32)
        _metadata(writer, config, arch)
        _vocabulary(writer, folder, text["vocab_size"], pre)
        written = 0
        for name, tensor in pending:
            target = names.get_name(name, try_suffixes=(".weight", ".bias"))
            if target is None:
                raise ValueError(f"{name}: no llama.cpp ({arch}) tensor name for it; use convert_hf_to_gguf.py.")
            if not target.endswith((".weight", ".bias")):  # stacked experts carry no suffix
                target += ".weight"
            array = tensor.float()
            keep_f32 = dtype == "f32" or tensor.dim() == 1 or ".ffn_gate_inp" in target
            writer.add_tensor(target, array.numpy() if keep_f32 else array.half().numpy())
            written += 1
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, output)  # the .gguf appears complete or not at all
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return {
        "architecture": arch,
        "expert_count": text["num_experts"],
        "expert_used_count": text["num_experts_per_tok"],
        "tensors": written,
        "bytes": output.stat().st_size,
    }
