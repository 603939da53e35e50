"""The `select:` section: validation-driven early stopping and best-checkpoint selection.

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
import operator
import re

from pydantic import Field, field_validator

from unlearn.config.base import Strict
from unlearn.config.eval import EvalConfig


class SelectConfig(Strict):
    every: int = Field(5, gt=0)
    score: str = "0"
    constraint: str = "True"
    stop_when: str | None = None
    patience: int | None = Field(None, gt=0)
    eval: EvalConfig | None = None  # an eval: section for validation; default: the run's, made cheap

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
