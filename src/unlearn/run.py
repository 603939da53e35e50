"""`unlearn run`: config -> data -> model -> (eval before) -> train -> save -> (eval after) -> report."""
from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from unlearn.config import ConfigError, RunConfig, dump_config, load_config
from unlearn.data.batches import build_data
from unlearn.data.original import original_answers, uses_original
from unlearn.errors import InputError
from unlearn.evaluation.cache import model_fingerprint
from unlearn.io import atomic_write_json, atomic_write_text
from unlearn.models.loading import load_model
from unlearn.models.prepare import apply_lora, frozen_copy, num_layers, save_model
from unlearn.objectives.methods import resolve_method
from unlearn.training.distributed import process_state, whole_model
from unlearn.training.loop import train

log = logging.getLogger(__name__)

RUN_MARKERS = ("config.yaml", "train_log.jsonl", "summary.json", "metrics.json")
RUN_FILES = (*RUN_MARKERS, "generations.jsonl", "report.html", "report.md", "negatives.jsonl")
RUN_FOLDERS = ("checkpoints", "model", "adapter", "plots", "validation", "original_answers")  # RUN_FILES and RUN_FOLDERS: what --overwrite removes


class OutputDirError(InputError):
    pass


@dataclass
class RunResult:
    output_dir: Path
    summary: dict
    paths: dict[str, str]
    metrics: dict | None = None


def refuse_existing_run(output_dir: Path, resume: bool, overwrite: bool) -> None:
    held = [m for m in RUN_MARKERS if (output_dir / m).exists()]
    if held and not (resume or overwrite):
        raise OutputDirError(f"{output_dir}: already holds a run ({held[0]}); pass --overwrite to replace it "
                             "or --resume to continue it")


def prepare_output_dir(output_dir: Path, resume: bool, overwrite: bool) -> None:
    refuse_existing_run(output_dir, resume, overwrite)
    if overwrite and not resume:
        for name in RUN_FILES:
            (output_dir / name).unlink(missing_ok=True)
        for folder in RUN_FOLDERS:
            shutil.rmtree(output_dir / folder, ignore_errors=True)
    output_dir.mkdir(parents=True, exist_ok=True)


def run(config: RunConfig | str | Path, output_dir: str | Path, *, overrides: list[str] | None = None,
        resume: bool = False, overwrite: bool = False) -> RunResult:
    """Run one unlearning job; everything lands in `output_dir`. Mirrors `unlearn run`."""
    if not isinstance(config, RunConfig):
        config = load_config(config, overrides)
    output_dir = Path(output_dir)
    state = process_state()  # under `accelerate launch`, only the main process writes files
    if config.data.forget.source == "self" and state.num_processes > 1:
        raise ConfigError("data.forget.source: self samples and judges on one process; run it without "
                          "accelerate launch (or with --num_processes 1)")
    if state.is_main_process:
        prepare_output_dir(output_dir, resume, overwrite)
    state.wait_for_everyone()
    wall = {}
    started = time.perf_counter()

    model, tokenizer = load_model(config.model.name, config.model.dtype, config.model.trust_remote_code,
                                  config.model.allow_pickle)
    method = resolve_method(config.method, num_layers(model))
    train_cfg = config.train
    model_files = model_fingerprint(config.model.name, config.model.dtype)  # keys the caches of the original's outputs
    data_cfg = config.data
    if uses_original(data_cfg):  # the normal answers are the original model's own (before any change)
        data_cfg = original_answers(data_cfg, model, tokenizer, output_dir, resume=resume,
                                    write=state.is_main_process, model_files=model_files)
        state.wait_for_everyone()  # the other processes read the main process's files
    data = build_data(data_cfg, tokenizer, seed=train_cfg.seed, batch_size=train_cfg.batch_size,
                      normal_batch_size=train_cfg.normal_batch_size or train_cfg.batch_size,
                      mismatch_k=method.knobs.mismatch_k if "mismatch" in method.weights else 0,
                      mismatch_answers=method.mismatch_answers,
                      guard_answers=method.mismatch_answers if "guard" in method.groups else None)
    if state.is_main_process:
        atomic_write_text(output_dir / "config.yaml", dump_config(config))
    wall["load"] = time.perf_counter() - started

    evaluator = None
    if config.eval and state.is_main_process:
        from unlearn.evaluation.runner import Evaluator

        evaluator = Evaluator(config.eval, tokenizer, data_cfg, output_dir)
        tick = time.perf_counter()
        evaluator.evaluate_original(model, model_files)
        wall["eval_before"] = time.perf_counter() - tick

    reference = None
    if config.model.lora is not None:
        torch.manual_seed(train_cfg.seed)  # LoRA's random init: the same seed gives the same run
        model = apply_lora(model, config.model.lora)
    else:
        reference = frozen_copy(model)
    if config.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if config.model.lora is not None:
            model.enable_input_require_grads()

    hooks = []
    if config.data.forget.source == "self":
        from unlearn.training.onpolicy import OnPolicyNegatives

        hooks.append(OnPolicyNegatives(config.model_copy(update={"data": data_cfg}), tokenizer, data, output_dir))
    if config.select:
        hooks.append(_selector(config, data_cfg, tokenizer, output_dir, reference, model_files))
    tick = time.perf_counter()
    result = train(model, data, method, train_cfg, output_dir, reference_model=reference, hooks=hooks,
                   resume=resume)
    wall["train"] = time.perf_counter() - tick
    for hook in hooks:
        hook.finish(model)
    if not state.is_main_process:
        return RunResult(output_dir, {"steps": result.steps, "stop_reason": result.stop_reason,
                                      "diverged": result.diverged}, {})
    if result.full_state is not None:  # sharded training (FSDP, ZeRO-3): save the gathered weights
        model = whole_model(config, result.full_state)
        reference = frozen_copy(load_model(config.model.name, config.model.dtype)[0]) if reference is not None else None

    tick = time.perf_counter()
    paths = save_model(model, tokenizer, output_dir, config.output.save)
    wall["save"] = time.perf_counter() - tick

    metrics = None
    if evaluator is not None:
        tick = time.perf_counter()
        metrics = evaluator.evaluate(model, stage="after", reference_model=reference)
        wall["eval_after"] = time.perf_counter() - tick

    summary = {
        "method": method.method.name, "weights": method.weights, "steps": result.steps,
        "max_steps": train_cfg.max_steps, "stop_reason": result.stop_reason, "diverged": result.diverged,
        "restored_step": result.restored_step, "processes": state.num_processes,
        "train_seconds": round(result.seconds, 2),
        "wall_seconds": {k: round(v, 2) for k, v in wall.items()},
        "total_seconds": round(time.perf_counter() - started, 2), "outputs": paths,
        "final": result.log[-1] if result.log else None,
    }
    for hook in hooks:
        summary.update(hook.summary())
    atomic_write_json(output_dir / "summary.json", summary)
    if evaluator is not None:
        from unlearn.report.build import build_report

        build_report(output_dir)
    return RunResult(output_dir, summary, paths, metrics)


def _selector(config: RunConfig, data_cfg, tokenizer, output_dir: Path, reference, model_files):
    """Validation every `select.every` steps with a cheap copy of the eval section (or `select.eval`)."""
    from unlearn.evaluation.runner import Evaluator
    from unlearn.training.select import SelectConfig, Selector

    select = SelectConfig.model_validate(config.select)
    eval_raw = select.eval
    if eval_raw is None:
        if not config.eval:
            raise ConfigError("select: needs an eval: section (or select.eval) to validate with")
        eval_raw = dict(config.eval)
        generation = dict(eval_raw.get("generation") or {})
        generation["max_new_tokens"] = min(generation.get("max_new_tokens", 48), 32)
        eval_raw["generation"] = generation
        eval_raw["max_rows"] = min(eval_raw.get("max_rows") or 16, 16)
    evaluator = Evaluator(eval_raw, tokenizer, data_cfg, output_dir / "validation")

    def validate(model, step: int) -> dict[str, float]:
        if step == 0:  # the original model (adapters still zero, or the untouched full model)
            return evaluator.evaluate_original(model, model_files)
        return evaluator.evaluate(model, stage=f"step-{step}", reference_model=reference)

    return Selector(select, validate, output_dir)
