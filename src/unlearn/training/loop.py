"""The training loop: one readable function. Data -> packed step batch -> one forward ->
weighted objectives -> AdamW step, with logging, stop rules, checkpoints and a divergence guard."""
from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from accelerate import Accelerator
from transformers import get_linear_schedule_with_warmup

from unlearn.config import TrainConfig
from unlearn.data.batches import GROUPS, UnlearnData
from unlearn.io import atomic_write_jsonl, read_jsonl
from unlearn.layout import RunFolder
from unlearn.models.precision import FrozenLowPrecision
from unlearn.objectives.forward import Needs, step_forward
from unlearn.objectives.losses import OBJECTIVES, mean_nll
from unlearn.objectives.resolve import ResolvedMethod
from unlearn.training.checkpoint import latest_checkpoint, load_checkpoint, load_weights_only, save_checkpoint
from unlearn.training.distributed import (SHARDED, agreed_row, batch_index, gathered_state, make_accelerator,
                                          prepare_reference)
from unlearn.training.tracking import TrainLog, hyperparameters
from unlearn.ui import progress

log = logging.getLogger(__name__)


class StepHook(Protocol):
    """Runs beside the loop (validation-driven selection, on-policy negatives); its state is saved
    with each checkpoint, so a resumed run continues it."""

    def before_training(self, model, log: TrainLog) -> str | None: ...  # a stop reason, or None; its rows go to `log`
    def after_step(self, step: int, model, row: dict) -> str | None: ...  # a stop reason, or None
    def summary(self) -> dict: ...  # merged into summary.json
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class TrainResult:
    steps: int
    stop_reason: str
    diverged: bool = False
    restored_step: int | None = None
    log: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    full_state: dict | None = None  # gathered weights of a sharded (FSDP, ZeRO-3) model, main process only


def _log_row(step: int, outputs, losses: dict[str, torch.Tensor], total: torch.Tensor) -> dict:
    row = {"step": step, "loss": total.item()}
    for group in GROUPS:
        if group in outputs.current.row_group:
            row[f"{group}_nll"] = mean_nll(outputs, group).item()
    if outputs.reference is not None and "normal" in outputs.reference.full_logprobs:
        row["kl"] = OBJECTIVES["kl_to_original"].fn(outputs, None).item()
    row.update({f"loss_{name}": value.item() for name, value in losses.items()})
    return row


def split_sides(losses: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(forget-side, normal-side) sums of the weighted terms: a term reading normal (or guard) rows
    is on the normal side. None when one side has no term (nothing can conflict)."""
    normal = [name for name in losses if {"normal", "guard"} & set(OBJECTIVES[name].groups)]
    if not normal or len(normal) == len(losses):
        return None
    return (sum(v for k, v in losses.items() if k not in normal), sum(losses[k] for k in normal))


def project_conflict(forget: list[torch.Tensor], normal: list[torch.Tensor]) -> tuple[list[torch.Tensor], float]:
    """PCGrad (Yu et al. 2020) for two tasks: when the forget-side gradient points against the
    normal-side one (negative dot product), remove its component along the normal-side gradient, so
    the step no longer undoes what the normal data holds. Returns the (projected) forget-side
    gradient and the cosine between the two before projection."""
    dot = sum((f.double() * n.double()).sum() for f, n in zip(forget, normal))
    forget_sq = sum((f.double() ** 2).sum() for f in forget)
    normal_sq = sum((n.double() ** 2).sum() for n in normal)
    cosine = float(dot / (forget_sq * normal_sq).sqrt()) if forget_sq > 0 and normal_sq > 0 else 0.0
    if dot < 0 and normal_sq > 0:
        scale = dot / normal_sq
        forget = [f - (scale * n.double()).to(f.dtype) for f, n in zip(forget, normal)]
    return forget, cosine


def backward_projected(forget_loss: torch.Tensor, normal_loss: torch.Tensor, params: list) -> float:
    """Accumulate into .grad the normal-side gradient plus the projected forget-side one."""
    def grads(loss, retain):
        found = torch.autograd.grad(loss, params, retain_graph=retain, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(params, found)]

    forget, normal = grads(forget_loss, True), grads(normal_loss, False)
    forget, cosine = project_conflict(forget, normal)
    for param, f, n in zip(params, forget, normal):
        param.grad = f + n if param.grad is None else param.grad + f + n
    return cosine


def adamw(params, lr: float, weight_decay: float = 0.0) -> torch.optim.AdamW:
    params = list(params)
    try:  # the fused kernel (CUDA; CPU since torch 2.4): a full fine-tune's optimizer step ~3x faster
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except RuntimeError:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def train(model, data: UnlearnData, method: ResolvedMethod, config: TrainConfig, output_dir: Path,
          *, reference_model=None, hooks: list[StepHook] = (), resume: bool = False,
          accelerator: Accelerator | None = None) -> TrainResult:
    accelerator = accelerator or make_accelerator(config.mixed_precision, config.trackers, RunFolder(output_dir).logs)
    torch.manual_seed(config.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(params, config.lr, config.weight_decay)
    # the scheduler is stepped by hand once per optimizer step (accelerate would step it once per process)
    scheduler = get_linear_schedule_with_warmup(optimizer, config.warmup_steps, config.max_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    reference_model = prepare_reference(accelerator, reference_model)
    # the KL on normal rows is logged when the objectives compute it; the max_kl guard asks for it
    needs = method.needs
    if config.max_kl is not None:
        needs = needs.merge(Needs(full_logprobs={"normal"}, reference_full={"normal"}))
    log_path = RunFolder(output_dir).train_log
    train_log = TrainLog(log_path, accelerator)
    # bf16 steps: frozen weights (a LoRA base, the original's copy) cast once, not at every call;
    # their own dtype between steps. Sharded weights are gathered per call and stay as they are
    low = accelerator.mixed_precision == "bf16" and accelerator.distributed_type not in SHARDED
    frozen_low = (FrozenLowPrecision(accelerator.unwrap_model(model), reference_model) if low
                  else contextlib.nullcontext())

    start, loop_state = 0, {"over_threshold_since": None, "last_good": None}
    if resume and (checkpoint := latest_checkpoint(output_dir)) is not None:
        loop_state = load_checkpoint(checkpoint, accelerator.unwrap_model(model), optimizer, scheduler)
        start = loop_state.pop("step")
        for hook, state in zip(hooks, loop_state.pop("hooks", [])):
            hook.load_state_dict(state)
        kept = [r for r in read_jsonl(log_path) if r.get("step", 0) <= start]
        if accelerator.is_main_process:
            atomic_write_jsonl(log_path, kept)
        log.info("resumed from %s", checkpoint)
    else:
        if resume:
            log.warning("--resume: no checkpoint in %s (train.save_every writes them); starting at step 0",
                        output_dir)
        if accelerator.is_main_process and log_path.exists():
            log_path.unlink()

    train_log.start(hyperparameters(config, method), Path(output_dir).name, resumed_at=start)
    reasons = [hook.before_training(model, train_log) for hook in hooks]
    model.train()
    stop_reason, diverged, started = next((r for r in reasons if r), "max_steps"), False, time.perf_counter()
    last_step = config.max_steps if stop_reason == "max_steps" else start  # a hook may stop before any step
    history: list[dict] = []
    with progress(accelerator.is_main_process) as bar:
        task = bar.add_task("unlearning", total=config.max_steps, completed=start, status="")
        for step in range(start + 1, last_step + 1):
            tick = time.perf_counter()
            rows, tokens = [], 0
            for micro in range(config.grad_accum):
                batch = data.step_batch(batch_index(step, micro, config.grad_accum, accelerator))
                batch = batch.select(tuple(sorted(method.groups | {"forget", "normal"})))
                batch.input_ids, batch.attention_mask, batch.labels = (
                    t.to(accelerator.device) for t in (batch.input_ids, batch.attention_mask, batch.labels))
                tokens += batch.answer_tokens
                with frozen_low:  # the forward and its backward
                    with accelerator.autocast():
                        outputs = step_forward(model, batch, needs, reference_model,
                                               split_rows=accelerator.distributed_type not in SHARDED,
                                               progress=(step - 1) / config.max_steps)
                        losses = {name: w * OBJECTIVES[name].fn(outputs, method.knobs)
                                  for name, w in method.weights.items()}
                        total = sum(losses.values())
                    rows.append(_log_row(step, outputs, losses, total))
                    if not torch.isfinite(total) and accelerator.num_processes == 1:
                        break  # (with several processes all must reach the all-reduce; the agreed row stops them)
                    sides = split_sides(losses) if config.project_conflicts else None
                    if sides is not None:  # two gradients, the forget side's conflict with the normal side removed
                        cosine = backward_projected(sides[0] / config.grad_accum, sides[1] / config.grad_accum, params)
                        rows[-1].update(grad_cosine=cosine, conflict=float(cosine < 0))
                    elif micro < config.grad_accum - 1:
                        with accelerator.no_sync(model):
                            accelerator.backward(total / config.grad_accum)
                    else:
                        accelerator.backward(total / config.grad_accum)
            row = {k: sum(r[k] for r in rows) / len(rows) if k != "step" else step for k in rows[0]}
            row, tokens = agreed_row(accelerator, row, tokens)
            if not math.isfinite(row["loss"]) or (config.max_kl is not None and row.get("kl", 0) > config.max_kl):
                what = "non-finite loss" if not math.isfinite(row["loss"]) else f"KL {row['kl']:.3g} > max_kl {config.max_kl}"
                stop_reason, diverged = f"diverged at step {step}: {what}", True
                optimizer.zero_grad(set_to_none=True)
                break
            norm = accelerator.clip_grad_norm_(params, config.grad_clip or float("inf"))
            row["grad_norm"] = float(norm) if norm is not None else None  # DeepSpeed clips inside its step
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            row.update(lr=scheduler.get_last_lr()[0], seconds=round(time.perf_counter() - tick, 4), tokens=tokens)

            for hook in hooks:
                reason = hook.after_step(step, model, row)
                if reason and stop_reason == "max_steps":
                    stop_reason = reason
            train_log.write(row)
            history.append(row)
            bar.update(task, advance=1, status=_status(row))

            if config.stop_forget_nll is not None and row.get("forget_nll", 0) > config.stop_forget_nll:
                loop_state["over_threshold_since"] = loop_state["over_threshold_since"] or step
            since = loop_state["over_threshold_since"]
            if since is not None and step - since >= config.stop_extra_steps:
                stop_reason = (f"forget NLL above stop_forget_nll={config.stop_forget_nll} since step {since}"
                               + (f" (+{config.stop_extra_steps} steps)" if config.stop_extra_steps else ""))
            if config.save_every and (step % config.save_every == 0 or stop_reason != "max_steps"):
                loop_state["last_good"] = step
                if accelerator.is_main_process:
                    save_checkpoint(output_dir, step, accelerator.unwrap_model(model), optimizer, scheduler,
                                    {**loop_state, "hooks": [h.state_dict() for h in hooks]})
                accelerator.wait_for_everyone()
            if stop_reason != "max_steps":
                break

    restored = None
    if diverged:
        checkpoint = latest_checkpoint(output_dir)
        if checkpoint is not None:
            load_weights_only(checkpoint, accelerator.unwrap_model(model))
            restored = int(checkpoint.name.split("-")[1])
            stop_reason += f"; output restored from the last good checkpoint (step {restored})"
        else:
            stop_reason += "; no earlier checkpoint (set train.save_every): the output is the last finite weights"
    train_log.finish()
    done = history[-1]["step"] if history else start
    return TrainResult(done, stop_reason, diverged, restored, history, time.perf_counter() - started,
                       gathered_state(accelerator, model))


def _status(row: dict) -> str:
    parts = [f"forget_nll {row['forget_nll']:.2f}" if "forget_nll" in row else "",
             f"kl {row['kl']:.3f}" if "kl" in row else "", f"loss {row['loss']:.3f}"]
    return "  ".join(p for p in parts if p)
