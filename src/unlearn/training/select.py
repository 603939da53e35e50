"""Validation-driven early stopping and best-checkpoint selection (`select:` in the config).

Every `every` steps (and once before the first step) a validation function scores the model on
small held-out splits. Rules are expressions over the metric names it returns:
- `constraint`: what a checkpoint must satisfy to be eligible (e.g. a utility floor); a rule can
  read the first validation (the original model) as `before.<metric>`, e.g.
  `recall@retain >= before.recall@retain - 0.1`;
- `score`: what the best eligible checkpoint maximises (e.g. `-forget_leak_rate`);
- `stop_when`: targets that end the run early once met; `patience`: stop after that many
  validations without a better eligible score.
The output model is the best checkpoint, not the last one. Validation runs in eval mode and
restores every RNG it could touch, so it does not change the training trajectory.
"""
from __future__ import annotations

import ast
import logging
import operator
import random
import re
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from safetensors.torch import load_file, save_file

from unlearn.config import ConfigError
from unlearn.io import append_jsonl, atomic_dir
from unlearn.models.prepare import load_trainable_state, trainable_state

log = logging.getLogger(__name__)


class SelectConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    every: int = Field(5, gt=0)
    score: str = "0"
    constraint: str = "True"
    stop_when: str | None = None
    patience: int | None = Field(None, gt=0)
    eval: dict | None = None  # an eval: section for validation; default: the run's, made cheap

    @field_validator("score", "constraint", "stop_when")
    @classmethod
    def _parses(cls, value):
        if value is not None:
            Rule(value)
        return value


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Lt: operator.lt, ast.LtE: operator.le,
        ast.Gt: operator.gt, ast.GtE: operator.ge, ast.Eq: operator.eq, ast.NotEq: operator.ne,
        ast.Not: operator.not_}


def _name(metric: str) -> str:
    return re.sub(r"[^0-9a-zA-Z_]", "_", metric)


class Rule:
    """A small arithmetic/boolean expression over metric names ('@' and '.' read as '_')."""

    def __init__(self, text: str):
        self.text = text
        try:
            self.tree = ast.parse(re.sub(r"(?<=\w)[@.](?=[A-Za-z_])", "_", text), mode="eval").body
        except SyntaxError:
            raise ValueError(f"cannot parse rule {text!r}") from None
        self._check(self.tree)

    def _check(self, node):
        allowed = (ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.BinOp, ast.Compare, ast.Name, ast.Constant,
                   ast.Load, *_OPS)
        for child in ast.walk(node):
            if not isinstance(child, allowed):
                raise ValueError(f"rule {self.text!r}: {type(child).__name__} is not allowed")

    def names(self) -> set[str]:
        return {n.id for n in ast.walk(self.tree) if isinstance(n, ast.Name)} - {"True", "False"}

    def __call__(self, metrics: dict[str, float]):
        values = {_name(k): v for k, v in metrics.items()}
        missing = self.names() - set(values)
        if missing:
            raise KeyError(f"rule {self.text!r} reads {sorted(missing)[0]!r}, which validation does not "
                           f"produce; it produces: {', '.join(sorted(values))}")
        return self._eval(self.tree, values)

    def _eval(self, node, values):
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return {"True": True, "False": False}.get(node.id, values.get(node.id))
        if isinstance(node, ast.BoolOp):
            results = [self._eval(v, values) for v in node.values]
            return all(results) if isinstance(node.op, ast.And) else any(results)
        if isinstance(node, ast.UnaryOp):
            return _OPS[type(node.op)](self._eval(node.operand, values))
        if isinstance(node, ast.BinOp):
            return _OPS[type(node.op)](self._eval(node.left, values), self._eval(node.right, values))
        left = self._eval(node.left, values)
        for op, right_node in zip(node.ops, node.comparators):
            right = self._eval(right_node, values)
            if not _OPS[type(op)](left, right):
                return False
            left = right
        return True


class Selector:
    """A training-loop hook (see training.loop.StepHook)."""

    def __init__(self, config: SelectConfig | dict, validate: Callable[[object, int], dict[str, float]], output_dir: Path):
        try:
            self.config = config if isinstance(config, SelectConfig) else SelectConfig.model_validate(config)
        except Exception as exc:  # pydantic error -> one line naming the field
            raise ConfigError(f"select: {str(exc).splitlines()[-2 if len(str(exc).splitlines()) > 1 else 0]}") from None
        self.validate = validate
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.score, self.constraint = Rule(self.config.score), Rule(self.config.constraint)
        self.stop_when = Rule(self.config.stop_when) if self.config.stop_when else None
        self.history: list[dict] = []
        self.best: dict | None = None
        self.since_improved = 0

    def best_path(self, step: int) -> Path:
        # named by step, so a resumed run never reads weights saved after its checkpoint
        return self.output_dir / "checkpoints" / f"best-step-{step}"

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
        append_jsonl(self.output_dir / "train_log.jsonl", row)
        improved = eligible and (self.best is None or not self.best["eligible"] or score > self.best["score"])
        # until something is eligible, keep the best score so far (the report says so)
        if improved or (self.best is None) or (not self.best["eligible"] and not eligible and score > self.best["score"]):
            self.best = {"step": step, "score": score, "eligible": eligible, "metrics": metrics}
            with atomic_dir(self.best_path(step)) as tmp:
                save_file({k: v.contiguous() for k, v in trainable_state(_unwrap(model)).items()},
                          str(tmp / "trainable.safetensors"))
        self.since_improved = 0 if improved else self.since_improved + 1
        return row

    def before_training(self, model) -> None:
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
            load_trainable_state(_unwrap(model), load_file(str(path)))
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
        for older in (self.output_dir / "checkpoints").glob("best-step-*"):
            if self.best is None or older != self.best_path(self.best["step"]):
                shutil.rmtree(older, ignore_errors=True)

    def state_dict(self) -> dict:
        # called when a checkpoint is written: older best weights can no longer be needed
        self._drop_stale_best()
        return {"history": self.history, "best": self.best, "since_improved": self.since_improved}

    def load_state_dict(self, state: dict) -> None:
        self.history, self.best, self.since_improved = state["history"], state["best"], state["since_improved"]


def _unwrap(model):
    return model.module if hasattr(model, "module") and not hasattr(model, "peft_config") else model
