"""`unlearn interpolate`: points between the original model and an unlearned one, for the frontier.

A run's update, scaled: W(a) = W_original + a * (W_unlearned - W_original). a = 1 is the run's
model, a = 0 the original; 0 < a < 1 gives up some forgetting for utility, without training again
(weight interpolation, as in WiSE-FT). Each factor gets a folder shaped like a run's output -
model/, config.yaml, summary.json and, when the run's config has an eval: section, metrics.json and
generations.jsonl - so `unlearn leaderboard RUN INTERPOLATED...` puts them on one frontier.
"""
from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from pathlib import Path

import torch

from unlearn.config import ConfigError, load_config
from unlearn.io import atomic_dir, atomic_write_text
from unlearn.layout import RunFolder

log = logging.getLogger(__name__)


def factor_label(factor: float) -> str:
    return f"x{factor:g}"


def saved_model(run_dir: Path) -> Path:
    """The run's saved weights: model/ (merged) if it has one, else adapter/."""
    for folder, marker in ((run_dir / "model", "config.json"), (run_dir / "adapter", "adapter_config.json")):
        if (folder / marker).is_file():
            return folder
    raise ConfigError(f"{run_dir}: no model/ or adapter/ to interpolate (the run was saved with output.save: none)")


def unlearned_weights(saved: Path, config, original) -> tuple[dict[str, torch.Tensor], str]:
    """The run's final weights (merged, or the adapter put on the original) and the model whose
    tokenizer goes with them."""
    if saved.name == "model":
        from unlearn.models.loading import load_model

        model, _ = load_model(str(saved), config.model.dtype, config.model.trust_remote_code, config.model.allow_pickle)
        return {k: v.detach().clone() for k, v in model.state_dict().items()}, str(saved)
    from peft import PeftModel

    model = PeftModel.from_pretrained(copy.deepcopy(original), str(saved), is_trainable=False)
    return {k: v.detach().clone() for k, v in model.merge_and_unload().state_dict().items()}, config.model.name


def interpolate(run_dir: str | Path, factors: list[float], output_dir: str | Path, overwrite: bool = False,
                evaluate: bool = True) -> list[Path]:
    """One folder per factor under `output_dir`, named `<run folder>-x<factor>`; returns them."""
    from unlearn.evaluation.runner import evaluate_model
    from unlearn.models.loading import load_model, load_tokenizer
    from unlearn.report.build import build_report

    run_dir, output_dir = Path(run_dir), Path(output_dir)
    run = RunFolder(run_dir)
    if not factors:
        raise ConfigError("name at least one --factor")
    for factor in factors:
        if not (factor > 0 and factor == factor and factor != float("inf")):
            raise ConfigError(f"--factor {factor}: must be a positive number (1 is the run's own model)")
    for needed in (run.config, run.summary):
        if not needed.is_file():
            raise ConfigError(f"{run_dir}: no {needed.name}; not a finished `unlearn run` output folder")
    saved = saved_model(run_dir)
    targets = [output_dir / f"{run_dir.name}-{factor_label(f)}" for f in factors]
    taken = [t for t in targets if t.exists()]
    if taken and not overwrite:
        raise ConfigError(f"{taken[0]}: already exists; pass --overwrite to replace it")
    config = load_config(run.config)
    summary = json.loads(run.summary.read_text())
    original, _ = load_model(config.model.name, config.model.dtype, config.model.trust_remote_code,
                             config.model.allow_pickle)
    start = {k: v.detach().clone() for k, v in original.state_dict().items()}
    final, tokenizer_source = unlearned_weights(saved, config, original)
    if set(final) != set(start):
        raise ConfigError(f"{run_dir}: its weights do not match {config.model.name}'s (another architecture?)")
    tokenizer = load_tokenizer(tokenizer_source, config.model.trust_remote_code)
    for factor, target in zip(factors, targets):
        started = time.perf_counter()
        mixed = {k: (start[k].float() + factor * (final[k].float() - start[k].float())).to(start[k].dtype)
                 for k in start}
        original.load_state_dict(mixed)
        point = RunFolder(target)
        with atomic_dir(target) as tmp:
            staged = RunFolder(tmp)
            original.save_pretrained(staged.model, safe_serialization=True)
            tokenizer.save_pretrained(staged.model)
            staged.config.write_bytes(run.config.read_bytes())
            if run.original_answers.is_dir():  # the original's answers (source: original): the same for every point
                shutil.copytree(run.original_answers, staged.original_answers)
        log.info("%s: the update scaled by %g", point.model, factor)
        evaluated = bool(evaluate and config.eval)
        if evaluated:
            evaluate_model(point.config, str(point.model), target, overwrite=True, reuse_original_answers=True)
        record = {**summary, "interpolated": {"from": str(run_dir.resolve()), "factor": factor},
                  "outputs": {"model": str(point.model)},
                  "total_seconds": round(time.perf_counter() - started, 2)}
        atomic_write_text(point.summary, json.dumps(record, indent=2) + "\n")
        if evaluated:  # the report reads summary.json too
            build_report(target)
    return targets
