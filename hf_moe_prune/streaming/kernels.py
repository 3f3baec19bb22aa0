"""Bounded oneDNN state for streaming calibration: matrix products see a few row counts, not every one.

On CPU, bf16 and fp16 matrix products run in oneDNN, which keeps a compiled kernel (and PyTorch's ideep a second
entry) for every distinct problem shape, about 0.6 MB each, up to 1024 entries per cache, never freed. Expert products
have as many rows as tokens were routed to the expert, so every layer brings new row counts: on a 16-layer bf16
qwen3_moe (`benchmarks/memory.py`) the caches grew by 40 MB of memory and 150 MB of address space per layer. Their
capacities are read from the environment once per process (`ONEDNN_PRIMITIVE_CACHE_CAPACITY`, `LRU_CACHE_CAPACITY`),
too late to set here; a small capacity also recompiles kernels all the time (10x slower), and switching oneDNN off
made calibration 3-15x slower.

So during the layer passes the row count of every CPU bf16/fp16 `mm`, `addmm` and `_grouped_mm` group is padded with
zero rows up to a bucket (4 per doubling: at most 25%, on average 8% more rows; 48 shapes cover every row count up to
8192), and the padding is dropped from the result. The caches then stop growing after the first layer. A row of a
product does not depend on the other rows, so padded products are bit-identical to unpadded ones
(`tests/test_safety_streaming.py` checks `mm`, `addmm` and `_grouped_mm` for many row counts), and the statistics
equal those of a full load, which runs the same oneDNN kernels.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
_REDUCED = (torch.bfloat16, torch.float16)


def bucket(rows: int) -> int:
    """The padded row count for `rows`: `rows` rounded up to 3 significant bits (4 buckets per doubling)."""
    if rows <= 4:
        return rows
    step = 1 << (rows.bit_length() - 3)
    return -(-rows // step) * step


def _pads(a: torch.Tensor) -> bool:
    # Only products oneDNN runs (CPU, reduced precision) grow the caches; a non-contiguous left operand is left alone
    # because copying it into a padded buffer would change its memory layout, and so possibly the kernel.
    return a.device.type == "cpu" and a.dtype in _REDUCED and a.dim() == 2 and a.is_contiguous()


def _padded(a: torch.Tensor, rows: int) -> torch.Tensor:
    out = a.new_zeros(rows, a.shape[1])
    out[: a.shape[0]] = a
    return out


def _grouped(func, a, b, offs=None, bias=None, out_dtype=None):
    """`_grouped_mm(a, b, offs)` one group at a time, each group's rows padded to its bucket.

    Group by group, so that the padded copies are one group's rows (small, reused by the allocator) instead of a
    second copy of all rows: one padded copy of everything left the heap fragmented (0.16 GB more address space).
    """
    out = None
    start = 0
    for group, end in enumerate(offs.tolist()):
        rows = end - start
        if rows:
            size = bucket(rows)
            x = _padded(a[start:end], size) if size != rows else a[start:end]
            one = torch.tensor([size], dtype=offs.dtype)
            result = func(x, b[group : group + 1], one, None if bias is None else bias[group : group + 1], out_dtype)
            if out is None:  # rows past offs[-1] stay unwritten, as the kernel leaves them
                out = result.new_empty(a.shape[0], result.shape[1])
            out[start:end] = result[:rows]
        start = end
    return out if out is not None else func(a, b, offs, bias, out_dtype)


class RowBuckets(TorchDispatchMode):
    """Pads the row count of CPU reduced-precision matrix products to a bucket (see the module docstring)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is aten.mm.default and not kwargs:
            a, b = args
            if _pads(a) and bucket(a.shape[0]) != a.shape[0]:
                return func(_padded(a, bucket(a.shape[0])), b)[: a.shape[0]]
        elif func is aten.addmm.default and len(args) == 3:
            bias, a, b = args
            if _pads(a) and bucket(a.shape[0]) != a.shape[0] and bias.dim() <= 1:
                return func(bias, _padded(a, bucket(a.shape[0])), b, **kwargs)[: a.shape[0]]
        elif func is aten._grouped_mm.default:
            a, b, *rest = args
            parts = dict(zip(("offs", "bias", "out_dtype"), rest), **kwargs)
            if _pads(a) and b.dim() == 3 and parts.get("offs") is not None:
                return _grouped(func, a, b, **parts)
        return func(*args, **kwargs)
