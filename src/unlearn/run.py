"""`unlearn run`: config -> data -> model -> (eval before) -> train -> save -> (eval after) -> report."""
from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from unlearn.config import RunConfig, dump_config, load_config
from unlearn.data.batches import build_data
from unlearn.io import atomic_write_json, atomic_write_text
from unlearn.models.loading import load_model
from unlearn.models.prepare import apply_lora, frozen_copy, num_layers, save_model
from unlearn.objectives.methods import resolve_method
from unlearn.training.loop import train

log = logging.getLogger(__name__)

RUN_MARKERS = ("config.yaml", "train_log.jsonl", "summary.json", "metrics.json")


class OutputDirError(ValueError):
    pass


@dataclass
class RunResult:
    output_dir: Path
    summary: dict
    paths: dict[str, str]
    metrics: dict | None = None


def prepare_output_dir(output_dir: Path, resume: bool, overwrite: bool) -> None:
    held = [m for m in RUN_MARKERS if (output_dir / m).exists()]
    if held and not (resume or overwrite):
        raise OutputDirError(f"{output_dir}: already holds a run ({held[0]}); pass --overwrite to replace it "
                             "or --resume to continue it")
    if overwrite and not resume:
        for name in (*RUN_MARKERS, "generations.jsonl", "report.html", "report.md", "negatives.jsonl"):
            (output_dir / name).unlink(missing_ok=True)
        for folder in ("checkpoints", "model", "adapter", "plots"):
            shutil.rmtree(output_dir / folder, ignore_errors=True)
    output_dir.mkdir(parents=True, exist_ok=True)


def run(config: RunConfig | str | Path, output_dir: str | Path, *, overrides: list[str] | None = None,
        resume: bool = False, overwrite: bool = False) -> RunResult:
    """Run one unlearning job; everything lands in `output_dir`. Mirrors `unlearn run`."""
    if not isinstance(config, RunConfig):
        config = load_config(config, overrides)
    output_dir = Path(output_dir)
    prepare_output_dir(output_dir, resume, overwrite)
    wall = {}
    started = time.perf_counter()

    model, tokenizer = load_model(config.model.name, config.model.dtype, config.model.trust_remote_code,
                                  config.model.allow_pickle)
    method = resolve_method(config.method, num_layers(model))
    train_cfg = config.train
    data = build_data(config.data, tokenizer, seed=train_cfg.seed, batch_size=train_cfg.batch_size,
                      normal_batch_size=train_cfg.normal_batch_size or train_cfg.batch_size,
                      mismatch_k=method.knobs.mismatch_k if "mismatch" in method.weights else 0,
                      mismatch_answers=method.mismatch_answers)
    atomic_write_text(output_dir / "config.yaml", dump_config(config))
    wall["load"] = time.perf_counter() - started

    evaluator = None
    if config.eval:
        from unlearn.evaluation.runner import Evaluator

        evaluator = Evaluator(config.eval, tokenizer, config.data, output_dir)
        tick = time.perf_counter()
        evaluator.evaluate(model, stage="before")
        wall["eval_before"] = time.perf_counter() - tick

    reference = None
    if config.model.lora is not None:
        model = apply_lora(model, config.model.lora)
    else:
        reference = frozen_copy(model)
    if config.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if config.model.lora is not None:
            model.enable_input_require_grads()

    hooks = []
    if config.select:
        from unlearn.training.select import Selector

        hooks.append(Selector(config.select, tokenizer, config.data, output_dir))
    tick = time.perf_counter()
    result = train(model, data, method, train_cfg, output_dir, reference_model=reference, hooks=hooks,
                   resume=resume)
    wall["train"] = time.perf_counter() - tick
    for hook in hooks:
        hook.finish(model)

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
        "restored_step": result.restored_step, "train_seconds": round(result.seconds, 2),
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
