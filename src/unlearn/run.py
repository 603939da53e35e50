"""`unlearn run`: config -> data -> model -> (eval before) -> train -> save -> (eval after) -> report."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from unlearn.config import ConfigError, RunConfig, dump_config, load_config
from unlearn.data.batches import build_data
from unlearn.data.original import original_answers, uses_original
from unlearn.evaluation.cache import model_fingerprint
from unlearn.io import atomic_write_json, atomic_write_text
from unlearn.layout import RunFolder
from unlearn.models.loading import load_model
from unlearn.models.prepare import apply_lora, frozen_copy, num_layers, save_model
from unlearn.objectives.resolve import ResolvedMethod, resolve_method
from unlearn.preflight import preflight
from unlearn.training.distributed import process_state, whole_model
from unlearn.training.loop import train

log = logging.getLogger(__name__)

@dataclass
class RunResult:
    output_dir: Path
    summary: dict
    paths: dict[str, str]
    metrics: dict | None = None


def run(config: RunConfig | str | Path, output_dir: str | Path, *, overrides: list[str] | None = None,
        resume: bool = False, overwrite: bool = False) -> RunResult:
    """Run one unlearning job; everything lands in `output_dir`. Mirrors `unlearn run`, its checks
    included: bad input fails here, before any weights load."""
    if not isinstance(config, RunConfig):
        config = load_config(config, overrides)
    output_dir = Path(output_dir)
    state = process_state()  # under `accelerate launch`, only the main process writes files
    if config.data.forget.source == "self" and state.num_processes > 1:
        raise ConfigError("data.forget.source: self samples and judges on one process; run it without "
                          "accelerate launch (or with --num_processes 1)")
    if config.train.project_conflicts and state.num_processes > 1:
        raise ConfigError("train.project_conflicts: the two gradients are taken on one process; run it without "
                          "accelerate launch (or with --num_processes 1)")
    preflight(config, output_dir, resume=resume, overwrite=overwrite)
    state.wait_for_everyone()  # every process checked the folder before the main one writes to it
    folder = RunFolder(output_dir)
    if state.is_main_process:
        folder.prepare(resume, overwrite)
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
                      mismatch_k=method.knobs.mismatch_k if "mismatch" in method.groups else 0,
                      mismatch_answers=method.mismatch_answers,
                      guard_answers=method.mismatch_answers if "guard" in method.groups else None)
    # rows each source gives training (on-policy negatives are counted by their rounds instead)
    sizes = {"forget": [len(data.forget) if config.data.forget.source == "dataset" else None],
             "normal": [len(rows) for rows in data.normal], "mismatch_pool": len(data.pool_answers)}
    if state.is_main_process:
        atomic_write_text(folder.config, dump_config(config))
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
    elif needs_original(config, method):
        reference = frozen_copy(model)
    if config.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if config.model.lora is not None:
            model.enable_input_require_grads()

    hooks = []
    if config.data.forget.source == "self":
        from unlearn.training.onpolicy import OnPolicyNegatives

        hooks.append(OnPolicyNegatives(config.model_copy(update={"data": data_cfg}), tokenizer, data, output_dir))
    selector = _selector(config, data_cfg, tokenizer, output_dir, reference, model_files) if config.select else None
    hooks += [selector] if selector else []
    tick = time.perf_counter()
    result = train(model, data, method, train_cfg, output_dir, reference_model=reference, hooks=hooks,
                   resume=resume)
    wall["train"] = time.perf_counter() - tick
    if selector is not None:
        selector.finish(model)  # the selected checkpoint's weights
    if not state.is_main_process:
        return RunResult(output_dir, {"steps": result.steps, "stop_reason": result.stop_reason,
                                      "diverged": result.diverged}, {})
    if result.full_state is not None:  # sharded training (FSDP, ZeRO-3): save the gathered weights
        model = whole_model(config, result.full_state)
        reference = None
    if config.model.lora is None and reference is None and evaluator is not None:  # the after stage reads the original
        reference = frozen_copy(load_model(config.model.name, config.model.dtype, config.model.trust_remote_code,
                                           config.model.allow_pickle)[0])

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
        "total_seconds": round(time.perf_counter() - started, 2), "outputs": paths, "data": sizes,
        "final": result.log[-1] if result.log else None,
    }
    if config.train.project_conflicts and result.log:
        cosines = [row["grad_cosine"] for row in result.log if "grad_cosine" in row]
        summary["conflicts"] = {"steps_conflicting": sum(row.get("conflict", 0) > 0 for row in result.log),
                                "steps": len(result.log),
                                "mean_cosine": round(sum(cosines) / len(cosines), 4) if cosines else None}
    for hook in hooks:
        summary.update(hook.summary())
    atomic_write_json(folder.summary, summary)
    from unlearn.report.card import write_model_cards  # the report's pieces: matplotlib loads only here

    write_model_cards(config, output_dir)
    if evaluator is not None:
        from unlearn.report.build import build_report

        build_report(output_dir)
    return RunResult(output_dir, summary, paths, metrics)


def needs_original(config: RunConfig, method: ResolvedMethod) -> bool:
    """Whether a full fine-tune keeps a frozen copy of the original beside the model it trains: an
    objective reads the original, the max_kl guard reads the KL, or validation compares with it."""
    return bool(method.needs.reference_groups or config.train.max_kl is not None or config.select)


def validation_eval(config: RunConfig):
    """`select.eval`, else the run's eval section made cheap (32 new tokens, 16 rows per set)."""
    if config.select.eval is not None:
        return config.select.eval
    generation = config.eval.generation
    return config.eval.model_copy(update={
        "generation": generation.model_copy(update={"max_new_tokens": min(generation.max_new_tokens, 32)}),
        "max_rows": min(config.eval.max_rows or 16, 16)})


def _selector(config: RunConfig, data_cfg, tokenizer, output_dir: Path, reference, model_files):
    """Validation every `select.every` steps with `validation_eval(config)`."""
    from unlearn.evaluation.runner import Evaluator
    from unlearn.training.select import Selector

    evaluator = Evaluator(validation_eval(config), tokenizer, data_cfg, RunFolder(output_dir).validation)

    def validate(model, step: int) -> dict[str, float]:
        if step == 0:  # the original model (adapters still zero, or the untouched full model)
            return evaluator.evaluate_original(model, model_files)
        return evaluator.evaluate(model, stage=f"step-{step}", reference_model=reference)

    return Selector(config.select, validate, output_dir)
