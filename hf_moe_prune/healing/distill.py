"""Healing: a short distillation of the pruned model toward the unpruned one, on the calibration rows.

The teacher is the unpruned model's next-token distribution on the scoring rows, recorded during the calibration pass
(`hf_moe_prune.calibration.recorders.TeacherHook`: its top-k log-probs per token, tokens × k memory), so no second
copy of the model is held and no extra teacher pass is run. The loss is the same KL the self-measurement reports,

    KL(teacher ‖ student) over the teacher's top-k tokens plus one bucket for the rest of the vocabulary,

averaged over positions; it is differentiable in the student's logits through `log_softmax` at the top-k ids and the
log of the student's remaining mass. The held-out rows (`eval_fraction`) are never trained on: every `eval_every`
steps the held-out KL is measured (`hf_moe_prune.pipeline.measure`), and training stops after `patience`
measurements without improvement. `keep_best` ends on the weights of the best measurement (a CPU copy of the trained
parameters while training); without it the last weights stay.

The model runs in eval mode (no dropout, deterministic routing) with gradients on the parameters `train` names only;
AdamW with float32 state, a linear warm-up, then a constant learning rate; gradients clipped to `max_grad_norm`. With
`lora` the trained parameters are LoRA adapters on what `train` names (`hf_moe_prune.healing.lora`), merged into the
weights when training ends; `keep_best` keeps the adapters of the best measurement.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import ExitStack, nullcontext
from typing import Any

import torch
from torch.nn.utils import parametrize
from tqdm.auto import tqdm
from transformers.utils.logging import is_progress_bar_enabled

from hf_moe_prune.calibration.runner import model_device, model_inputs
from hf_moe_prune.calibration.teacher import TeacherRecords, log1mexp
from hf_moe_prune.healing.lora import LoraHealing
from hf_moe_prune.healing.offload import LORA_OFFLOADED, offloaded_hooks, offloaded_training
from hf_moe_prune.healing.params import MasterAdamW, trainable_modules, trainable_parameters


def distillation_loss(teacher: TeacherRecords, logits: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(teacher ‖ student) over the teacher's top-k plus one tail bucket.

    Args:
        teacher (`TeacherRecords`): The teacher's records of the batch's rows.
        logits (`torch.Tensor` of shape `[B, P, vocab]`): The student's next-token logits at the same positions.
    """
    log_z = torch.logsumexp(logits.float(), dim=-1, keepdim=True)
    q_top = logits.float().gather(-1, teacher.top_indices.to(logits.device)) - log_z
    p_top = teacher.top_logprobs.to(logits.device)
    kl = (p_top.exp() * (p_top - q_top)).sum(-1)
    if teacher.top_k < teacher.vocab_size:
        floor = math.log(torch.finfo(torch.float32).eps)  # as the measurement: tails below float32 resolution
        log_p_tail = log1mexp(torch.logsumexp(p_top, dim=-1)).clamp(min=floor)
        log_q_tail = log1mexp(torch.logsumexp(q_top, dim=-1).clamp(max=-1e-7)).clamp(min=floor)
        kl = kl + log_p_tail.exp() * (log_p_tail - log_q_tail)
    return kl.mean()


def heal(
    model: torch.nn.Module,
    teacher: TeacherRecords,
    options: dict[str, Any],
    held_out: TeacherRecords | None = None,
    measure: Callable[..., dict[str, Any]] | None = None,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = True,
    callback: Callable[[int, torch.nn.Module], None] | None = None,
) -> dict[str, Any]:
    """Distil `model` (pruned, in place) toward `teacher` on the teacher's rows.

    Args:
        model (`PreTrainedModel`): The pruned model (trained in place).
        teacher (`TeacherRecords`): The unpruned model's records on the training rows (the scoring rows).
        options (`dict`): Normalised `healing` options (`hf_moe_prune.healing_options.healing_options`).
        held_out (`TeacherRecords`, *optional*): The unpruned model's records on the held-out rows: early stopping,
            and the before/after numbers. Never trained on.
        measure (`Callable`, *optional*): `measure(model, held_out, batch_size=...)` returning at least `kl` and
            `ppl_after` (`hf_moe_prune.pipeline.measure.measure`; passed in, the pipeline sits above healing).
        batch_size (`int`, *optional*, defaults to 8): Rows per step when `options["batch_size"]` is None.
        seed (`int`, *optional*, defaults to 0): Seed of the batch order.
        progress (`bool`, *optional*, defaults to `True`): Show a progress bar.
        callback (`Callable`, *optional*): `callback(step, model)` after every held-out measurement (e.g. to
            evaluate on other text; `benchmarks/healing.py`).

    Returns:
        `dict`: the record for `PrunePlan.healing` (steps run, why it stopped, the options, train and held-out KL
        before and after, the history of measurements, seconds; with `lora`, the adapters' settings and targets).
    """
    start = time.perf_counter()
    size = options["batch_size"] or batch_size
    flags = {id(p): p.requires_grad for p in model.parameters()}  # before peft freezes the weights
    was_training = model.training
    generator = torch.Generator().manual_seed(seed)
    device = model_device(model)

    def held_out_kl() -> dict[str, Any] | None:
        return None if held_out is None or measure is None else measure(model, held_out, batch_size=size)

    offload = ExitStack()  # offloaded weights that train are brought into memory, and back into the store after
    with offload:
        lora, offloaded = None, 0
        if options.get("lora") and offloaded_hooks(model, [model]):  # a device_map resolved after the checks
            raise ValueError(LORA_OFFLOADED)
        if options.get("lora"):  # one forward of one row under the adapters first: a layout peft cannot wrap fails
            lora = LoraHealing(model, options, probe=model_inputs(model, teacher.rows[:1].to(device)))
        try:
            if lora is None:
                offloaded = offload.enter_context(
                    offloaded_training(model, trainable_modules(model, options["train"]))
                )
            params = lora.parameters if lora else trainable_parameters(model, options["train"])
            if not params:
                raise ValueError(f"healing: the model has no parameters to train under train={options['train']}.")
            for p in model.parameters():
                p.requires_grad_(False)
            for p in params:
                p.requires_grad_(True)
            optimizer = MasterAdamW(params, options["lr"], options["weight_decay"])
            before = held_out_kl()
            history: list[dict[str, Any]] = []
            best = (before or {}).get("kl")
            # keep_best: the weights to end on, from the start (healing that never improves the held-out KL is undone)
            best_state = [p.detach().to("cpu", copy=True) for p in params] if options["keep_best"] and before else None
            since, stopped, losses = 0, "steps", []
            order = torch.randperm(len(teacher.rows), generator=generator)
            position = 0
            disabled = not progress or not is_progress_bar_enabled()
            model.eval()
            bar = tqdm(range(options["steps"]), desc="healing", unit="step", disable=disabled)
            for step in bar:
                if position + size > len(order):
                    order, position = torch.randperm(len(teacher.rows), generator=generator), 0
                pick = order[position : position + size]
                position += size
                batch = teacher.select_rows(pick)
                scale = min(1.0, (step + 1) / options["warmup"]) if options["warmup"] else 1.0
                optimizer.set_lr(options["lr"] * scale)
                with torch.enable_grad(), lora.dropout() if lora else nullcontext(), parametrize.cached():
                    output = model(**model_inputs(model, batch.rows.to(device)), use_cache=False)
                    logits = output.logits[:, : batch.rows.shape[1] - batch.shift]
                    loss = distillation_loss(batch, logits)
                    loss.backward()
                optimizer.step(options["max_grad_norm"])
                losses.append(float(loss.detach()))
                bar.set_postfix(kl=f"{losses[-1]:.4f}", refresh=False)
                last = step + 1 == options["steps"]
                if before is not None and ((step + 1) % options["eval_every"] == 0 or last):
                    quality = held_out_kl()
                    recent = losses[-options["eval_every"] :]
                    history.append(
                        {"step": step + 1, "train_kl": sum(recent) / len(recent), "held_out_kl": quality["kl"]}
                    )
                    if callback is not None:
                        callback(step + 1, model)
                    if quality["kl"] is not None and (best is None or quality["kl"] < best):
                        best, since = quality["kl"], 0
                        if options["keep_best"]:
                            best_state = [p.detach().to("cpu", copy=True) for p in params]
                    else:
                        since += 1
                        if options["patience"] and since >= options["patience"] and not last:
                            stopped = "early stopping (held-out KL did not improve)"
                            break
            if best_state is not None:
                with torch.no_grad():
                    for param, value in zip(params, best_state, strict=True):
                        param.copy_(value.to(param.device))
            if lora is not None:
                lora.merge()  # a plain transformers model again, measured and saved as such
        finally:
            if lora is not None:  # when training failed: back to the weights before healing (no-op once merged)
                lora.discard()
            for p in model.parameters():
                p.requires_grad_(flags.get(id(p), True))
                p.grad = None
            model.train(was_training)
    steps_run = len(losses)
    after = held_out_kl()
    record: dict[str, Any] = {
        "steps": steps_run,
        "stopped": stopped,
        "options": dict(options),
        "train_rows": len(teacher.rows),
        "trained_parameters": sum(p.numel() for p in params),
        **({"lora": lora.record(options)} if lora else {}),
        **({"offloaded_tensors": offloaded} if offloaded else {}),
        "train_kl_first": losses[0] if losses else None,
        "train_kl_last": sum(losses[-options["eval_every"] :]) / len(losses[-options["eval_every"] :])
        if losses
        else None,
        "seconds": round(time.perf_counter() - start, 3),
    }
    if before is not None and after is not None:
        record.update(
            held_out_kl_before=before["kl"],
            held_out_kl_after=after["kl"],
            held_out_ppl_before=before["ppl_after"],
            held_out_ppl_after=after["ppl_after"],
            history=history,
        )
        if best_state is not None:
            record["ended_on_best"] = True
    return record
