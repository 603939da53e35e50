"""Validation-driven early stopping and best-checkpoint selection: the `select:` hook of the loop.

Every `every` steps (and once before the first step) it validates the model and applies the rules
of `select:` (config/select.py: constraint, score, stop_when, patience). The output model is the
best checkpoint, not the last one. Validation runs in eval mode and restores every RNG it could
touch, so it does not change the training trajectory.
"""
from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from unlearn.config.select import Rule, SelectConfig
from unlearn.io import atomic_dir
from unlearn.layout import RunFolder
from unlearn.models.prepare import load_trainable_state, trainable_state, unwrap
from unlearn.training.tracking import TrainLog

log = logging.getLogger(__name__)


class Selector:
    """A training-loop hook (see training.loop.StepHook)."""

    def __init__(self, config: SelectConfig | dict, validate: Callable[[object, int], dict[str, float]],
                 output_dir: Path):
        self.config = config if isinstance(config, SelectConfig) else SelectConfig.model_validate(config)
        self.validate = validate
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.score, self.constraint = Rule(self.config.score), Rule(self.config.constraint)
        self.stop_when = Rule(self.config.stop_when) if self.config.stop_when else None
        self.history: list[dict] = []
        self.best: dict | None = None
        self.since_improved = 0
        self.log: TrainLog | None = None  # set by before_training

    def best_path(self, step: int) -> Path:
        # named by step, so a resumed run never reads weights saved after its checkpoint
        return RunFolder(self.output_dir).checkpoints / f"best-step-{step}"

    def _run_validation(self, step: int, model) -> dict:
        rng = (torch.get_rng_state(), random.getstate(), np.random.get_state())
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                metrics = {k: float(v) for k, v in self.validate(model, step).items()}
        finally:
            model.train(was_training)
            torch.set_rng_state(rng[0])
            random.setstate(rng[1])
            np.random.set_state(rng[2])
        # rules may compare with the first validation (the original model): `before.<metric>`
        baseline = self.history[0] if self.history else metrics
        names = {**metrics, **{f"before.{k}": v for k, v in baseline.items() if isinstance(v, float)}}
        eligible = bool(self.constraint(names))
        score = float(self.score(names)) + 0.0  # no "-0" for a perfect negated rate
        row = {"step": step, "validation": True, **metrics, "score": score, "eligible": eligible}
        self.history.append(row)
        self.log.write(row)
        improved = eligible and (self.best is None or not self.best["eligible"] or score > self.best["score"])
        # until something is eligible, keep the best score so far (the report says so)
        if improved or (self.best is None) or (not self.best["eligible"] and not eligible and score > self.best["score"]):
            self.best = {"step": step, "score": score, "eligible": eligible, "metrics": metrics}
            with atomic_dir(self.best_path(step)) as tmp:
                save_file({k: v.contiguous() for k, v in trainable_state(unwrap(model)).items()},
                          str(tmp / "trainable.safetensors"))
        self.since_improved = 0 if improved else self.since_improved + 1
        return row

    def before_training(self, model, log: TrainLog) -> None:
        self.log = log
        if not self.history:
            self._run_validation(0, model)

    def after_step(self, step: int, model, row: dict) -> str | None:
        if step % self.config.every:
            return None
        validation = self._run_validation(step, model)
        # targets met by an ineligible checkpoint (e.g. nothing leaks because nothing is answered)
        # are no reason to stop: training goes on, and the utility terms may bring it back
        if self.stop_when is not None and validation["eligible"] and self.stop_when(validation):
            return f"validation met stop_when ({self.config.stop_when}) and the constraint at step {step}"
        if self.config.patience and self.since_improved >= self.config.patience:
            return f"no better eligible checkpoint for {self.config.patience} validations (patience)"
        return None

    def finish(self, model) -> None:
        """Load the best checkpoint's weights into the model."""
        if self.best is not None and self.best_path(self.best["step"]).exists():
            path = self.best_path(self.best["step"]) / "trainable.safetensors"
            load_trainable_state(unwrap(model), load_file(str(path)))
        self._drop_stale_best()

    def summary(self) -> dict:
        if self.best is None:
            return {}
        why = (f"highest score ({self.config.score}) among validations meeting {self.config.constraint}"
               if self.best["eligible"] else
               f"no validation met {self.config.constraint}; highest score ({self.config.score}) overall")
        return {"selection": {"best_step": self.best["step"], "score": self.best["score"],
                              "eligible": self.best["eligible"], "reason": why, "metrics": self.best["metrics"],
                              "validations": len(self.history)}}

    def _drop_stale_best(self) -> None:
        for older in RunFolder(self.output_dir).checkpoints.glob("best-step-*"):
            if self.best is None or older != self.best_path(self.best["step"]):
                shutil.rmtree(older, ignore_errors=True)

    def state_dict(self) -> dict:
        # called when a checkpoint is written: older best weights can no longer be needed
        self._drop_stale_best()
        return {"history": self.history, "best": self.best, "since_improved": self.since_improved}

    def load_state_dict(self, state: dict) -> None:
        self.history, self.best, self.since_improved = state["history"], state["best"], state["since_improved"]
