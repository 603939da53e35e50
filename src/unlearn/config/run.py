"""The run config: YAML in, validated pydantic objects out, every section typed.

The YAML shape is the user-facing contract (see README "Config reference"); `--set a.b=c`
overrides any key by its dotted path before validation, so a bad override fails at load time.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from unlearn.config.base import ConfigError, SourceConfig, Strict, format_validation_error, path_fields
from unlearn.config.eval import EvalConfig
from unlearn.config.select import SelectConfig
from unlearn.objectives.methods import METHODS  # the method table (no torch): names are checked on load


class LoraConfig(Strict):
    r: int = Field(16, gt=0)
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"
    # std of a random start for the B matrices (0: peft's zero start, where the adapted model is
    # exactly the original and the gradient of a cosine to the original's states is exactly zero)
    init_noise: float = Field(0.0, ge=0)


class ModelConfig(Strict):
    name: str = "smollm2-135m-instruct"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    lora: LoraConfig | None = None
    trust_remote_code: bool = False
    allow_pickle: bool = False
    gradient_checkpointing: bool = False


class OnPolicyConfig(Strict):
    """How on-policy negatives are made (data.forget.source: self); see docs/onpolicy.md.

    judge: harmful (the eval.judge settings), leak (the answer contains or overlaps the protected
    text), hallucination (the answer is closer to the hallucinated answer than to the right one).
    reference: the forget file's field the judge compares with - leak: the protected text (default:
    the response field); hallucination: the right answer (required; the response field holds the
    hallucinated one)."""

    judge: Literal["harmful", "leak", "hallucination"] = "harmful"
    samples: int = Field(4, gt=0)  # answers sampled per forget prompt
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(64, gt=0)
    batch_size: int = Field(16, gt=0)
    seed: int = 0
    every: int | None = Field(None, gt=0)  # re-sample on the current model every N steps (a round)
    mix_dataset: bool = False  # also train on the forget file's own responses
    reference: str | None = None
    score: Literal["contains", "bleu", "rouge_l"] = "contains"  # leak: comparison with the protected text
    threshold: float = Field(0.5, ge=0, le=1)  # leak: flagged when score >= threshold

    @model_validator(mode="after")
    def _reference(self):
        if self.judge == "hallucination" and not self.reference:
            raise ValueError("judge: hallucination needs reference: (the forget file's field with the right answer)")
        return self


class DataConfig(Strict):
    forget: SourceConfig
    normal: list[SourceConfig]
    # mismatch answers are drawn from these sources; default: all normal sources
    mismatch_pool: list[SourceConfig] | None = None
    template: str = "auto"
    max_length: int = Field(256, gt=8)
    onpolicy: OnPolicyConfig | None = None  # with data.forget.source: self (defaults when unset)

    @field_validator("normal", "mismatch_pool", mode="before")
    @classmethod
    def _one_or_many(cls, value):
        return [value] if isinstance(value, dict) else value

    @field_validator("normal", "mismatch_pool")
    @classmethod
    def _files_only(cls, sources):
        if any(source.source == "self" for source in sources or []):
            raise ValueError("source: self is only for data.forget (the model's own answers to the forget prompts)")
        return sources

    @model_validator(mode="after")
    def _onpolicy(self):
        if self.forget.source == "original":
            raise ValueError("forget.source: original is only for data.normal and data.mismatch_pool "
                             "(the forget answers are the file's, or the model's own with source: self)")
        if self.forget.source == "self":
            self.onpolicy = self.onpolicy or OnPolicyConfig()
            if self.onpolicy.judge == "hallucination" and self.forget.dataset is not None:
                raise ValueError("onpolicy.judge: hallucination reads its questions from a file (forget.path:), "
                                 "as the hallucination eval task does; a dataset: works with the harmful and leak "
                                 "judges")
        elif self.onpolicy is not None:
            raise ValueError("onpolicy: is used only with data.forget.source: self")
        return self

    @field_validator("template")
    @classmethod
    def _template(cls, value: str):
        if value in ("auto", "raw"):
            return value
        head, found, tail = value.partition("{response}")
        try:  # the prompt part must format with {prompt} alone, and really contain it
            usable = found and not tail.strip() and "\0" in head.format(prompt="\0")
        except (KeyError, IndexError, ValueError):
            usable = False
        if not usable:
            raise ValueError("template must be 'auto', 'raw', or a format string with {prompt} and ending in "
                             "{response} (write other braces doubled: {{ }})")
        return value


class MethodConfig(Strict):
    name: str = "paper"
    weights: dict[str, float] | None = None  # None: the method's defaults
    mismatch_k: int = Field(5, gt=0)
    npo_beta: float = Field(0.1, gt=0)
    simnpo_gamma: float = 0.0
    refusals: list[str] | None = None
    kl_tokens: int = Field(4, gt=0)  # kl_first_tokens: how many answer tokens per normal row
    rmu_layer: int | None = None
    rmu_steering: float = Field(6.5, gt=0)
    rr_layers: list[int] | None = Field(None, min_length=1)  # rr / retain_hidden (default: a third, two thirds up)
    rr_alpha: float = Field(5.0, gt=0)  # rr: the schedule's scale a (published 5-10)
    rr_center: bool = False  # rr: cosines of states minus the original's mean answer state (not the raw states)
    dpo_beta: float = Field(0.1, gt=0)

    @field_validator("weights")
    @classmethod
    def _weights(cls, value):
        if value is None:
            return value
        for key, weight in value.items():
            if not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
                raise ValueError(f"weight of {key!r} must be a non-negative number, got {weight!r}")
        return value


class CompareMethod(MethodConfig):
    """One method's settings in a comparison: its knobs, and optionally its own learning rate."""
    lr: float | None = Field(None, gt=0)


class TrainConfig(Strict):
    lr: float = Field(2.0e-4, gt=0)
    batch_size: int = Field(2, gt=0)
    normal_batch_size: int | None = Field(None, gt=0)  # default: batch_size
    max_steps: int = Field(60, gt=0)
    seed: int = 8888
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)
    grad_accum: int = Field(1, gt=0)
    # auto: bf16 where the device multiplies it natively (models/precision.py), else float32
    mixed_precision: Literal["no", "bf16", "fp16", "auto"] = "no"
    stop_forget_nll: float | None = Field(None, gt=0)
    stop_extra_steps: int = Field(0, ge=0)
    save_every: int | None = Field(None, gt=0)
    max_kl: float | None = Field(None, gt=0)  # divergence guard on the normal-data KL
    log_every: int = Field(1, gt=0)
    # PCGrad: where the forget-side gradient conflicts with the normal-side one, drop its component
    # along it (one process, no fp16 loss scaling)
    project_conflicts: bool = False
    # experiment trackers (accelerate's), writing into OUTPUT_DIR/logs/: every train-log row by step
    report_to: list[Literal["none", "tensorboard", "wandb"]] = ["none"]

    @field_validator("report_to", mode="before")
    @classmethod
    def _one_or_many(cls, value):
        return [value] if isinstance(value, str) else value

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _unquoted_no(cls, value):
        return "no" if value is False else value  # YAML reads a bare `no` as false

    @model_validator(mode="after")
    def _projection(self):
        if self.project_conflicts and self.mixed_precision == "fp16":
            raise ValueError("project_conflicts takes its gradients without fp16 loss scaling: use bf16 or no")
        if "none" in self.report_to and len(self.report_to) > 1:
            raise ValueError("report_to: none means no tracker; leave it out of a list of trackers")
        return self

    @property
    def trackers(self) -> list[str]:
        return [name for name in self.report_to if name != "none"]


class OutputConfig(Strict):
    save: Literal["merged", "adapter", "both", "none"] = "merged"
    # the trained update scaled before saving and the after-evaluation: W_original + s * (W - W_original);
    # > 1 extrapolates it (what `unlearn interpolate -f s` measures afterwards), < 1 gives some back
    update_scale: float = Field(1.0, gt=0, allow_inf_nan=False)


class RunConfig(Strict):
    model: ModelConfig = ModelConfig()
    data: DataConfig
    method: MethodConfig = MethodConfig()
    train: TrainConfig = TrainConfig()
    output: OutputConfig = OutputConfig()
    eval: EvalConfig | None = None
    select: SelectConfig | None = None
    # `unlearn compare` only: method knobs (and lr) per method name, e.g. {idk: {weights: {kl_to_original: 3}}},
    # or per variant: a label of your own with the method in `name`, e.g. {idk-kl30: {name: idk, ...}}
    compare: dict[str, CompareMethod] | None = None

    @field_validator("compare")
    @classmethod
    def _compare(cls, value):
        for label, knobs in (value or {}).items():
            if label in METHODS:
                if "name" in knobs.model_fields_set and knobs.name != label:
                    raise ValueError(f"{label}.name: {knobs.name!r} differs from the method it configures; "
                                     "leave it out, or give the variant a label of its own")
                continue
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", label):
                raise ValueError(f"{label!r}: a variant's label is also its folder name: use letters, digits "
                                 "and . _ + - only")
            if "name" not in knobs.model_fields_set:
                raise ValueError(f"{label}: not a method name, so it is a variant and needs name: (one of "
                                 f"{', '.join(sorted(METHODS))})")
            if knobs.name not in METHODS:
                raise ValueError(f"{label}.name: unknown method {knobs.name!r}; known: {', '.join(sorted(METHODS))}")
        return value

    @model_validator(mode="after")
    def _lora_save(self):
        if self.model.lora is None and self.output.save in ("adapter", "both"):
            raise ValueError("output.save: adapter needs model.lora (a full fine-tune has no adapter)")
        return self


def _parse_scalar(text: str) -> Any:
    value = yaml.safe_load(text) if text.strip() else ""
    if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
        return float(value)  # YAML 1.1 reads `1e-4` (no dot) as a string; `--set train.lr=1e-4` means a number
    return value


_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, value = item.split("=", 1)
        node = raw
        parts = key.strip().split(".")
        for part, after in zip(parts[:-1], parts[1:]):
            if isinstance(node, list):  # `eval.tasks.0.reference=...`: an item by its index
                if not (part.isdigit() and int(part) < len(node)):
                    raise ConfigError(f"--set {key}: {part!r} is not an index of that list (0-{len(node) - 1})")
                node = node[int(part)]
                continue
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif isinstance(child, list) and not after.isdigit():
                if len(child) != 1:
                    raise ConfigError(f"--set {key}: {part!r} is not a section (a list of {len(child)}: name an "
                                      f"item by its index, e.g. {part}.0.{after})")
                child = child[0]  # `data.normal.response=...` addresses a single-source list
            if not isinstance(child, (dict, list)):
                raise ConfigError(f"--set {key}: {part!r} is not a section")
            node = child
        if isinstance(node, list):
            raise ConfigError(f"--set {key}: {parts[-2]!r} is a list; name an item's key (e.g. {parts[-2]}.0.KEY)")
        node[parts[-1]] = _parse_scalar(value)
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                raw: dict | None = None) -> RunConfig:
    """Read a YAML file (or take a dict), apply `key=value` overrides, validate."""
    source = str(path) if path is not None else "config"
    if raw is None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f":{mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{path}{line}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        base = path.parent
    else:
        base = Path(".")
    raw = apply_overrides(_deep_copy(raw), overrides or [])
    try:
        config = RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, RunConfig)) from None
    resolve_paths(config, base)
    return config


def _deep_copy(raw):
    return yaml.safe_load(yaml.safe_dump(raw))


def resolve_paths(config: RunConfig, base: Path) -> None:
    """Data paths, local `dataset:` folders (and a local model.name) in a config file are relative to
    the file, so configs travel with their data (a path that exists from the working directory is
    taken from there). Found paths become absolute, so the run's saved config.yaml works from
    anywhere. An alias or hub id that names no file or folder is left as it is."""
    for _, node in path_fields(config, ""):
        for key in ("path", "dataset"):
            value = getattr(node, key, None)
            if isinstance(value, str):
                setattr(node, key, _found(value, base) or value)
    config.model.name = _found(config.model.name, base) or config.model.name


def _found(value: str, base: Path) -> str | None:
    candidate = Path(value).expanduser()
    if candidate.is_absolute():
        return None
    return next((str(found.resolve()) for found in (candidate, base / candidate) if found.exists()), None)


def dump_config(config: RunConfig) -> str:
    """The resolved config as YAML that `unlearn run` takes again: every section whole, but of the
    method's knobs only those set (a knob at its default that the method does not read is an error)."""
    data = config.model_dump(mode="json")
    data["method"] = {"name": config.method.name, **config.method.model_dump(mode="json", exclude_unset=True)}
    return yaml.safe_dump(data, sort_keys=False)
