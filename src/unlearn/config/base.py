"""The leaf of the config package: the strict base model, the config error, one data source, and
the one-line message a validation error becomes. Imports nothing of the project but its errors."""
from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from unlearn.errors import InputError


class ConfigError(InputError):
    """Bad user input in a config: the message names the file and the field."""


class Strict(BaseModel):
    """Every config section: an unknown key is an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


# `where:` of a source: keep only the rows whose fields equal these values (before skip/limit), e.g.
# {label: safe}; a CSV cell "False" equals false (cells are text)
RowFilter = dict[str, str | bool | int | float] | None


class SourceConfig(Strict):
    """One data source: a file (`path`) or a Hugging Face data set (`dataset`: a hub id read from the
    local cache, or a folder written by `save_to_disk`; `split`, and `subset` = the hub data set's
    config name). `prompt`/`response` name the fields to read (or, for `format: text`, the file is
    plain text cut into token windows: the first `prompt_tokens` tokens are the prompt, the rest the
    response)."""

    path: str | None = None
    dataset: str | None = None
    split: str | None = None  # default: train, or the data set's only split
    subset: str | None = None
    prompt: str = "prompt"
    response: str = "response"
    format: Literal["auto", "jsonl", "json", "csv", "parquet", "text"] = "auto"
    weight: float = Field(1.0, ge=0)
    limit: int | None = Field(None, gt=0)
    skip: int = Field(0, ge=0)
    window_tokens: int = Field(128, gt=1)
    prompt_tokens: int = Field(32, gt=0)
    # self (data.forget only): the forget answers are the model's own, sampled and judged (data.onpolicy);
    # original (data.normal, data.mismatch_pool): the answers are the original model's greedy ones,
    # `answer_tokens` long, generated before training (unlearn.data.original)
    source: Literal["dataset", "self", "original"] = "dataset"
    answer_tokens: int = Field(64, gt=0)
    where: RowFilter = None

    @model_validator(mode="after")
    def _source(self):
        if (self.path is None) == (self.dataset is None):
            raise ValueError("give path: (a data file) or dataset: (a Hugging Face data set: hub id or "
                             "save_to_disk folder)" + (", not both" if self.path else ""))
        if self.path is not None and (self.split is not None or self.subset is not None):
            raise ValueError("split: and subset: choose the rows of a dataset:; a path: file has neither")
        if self.dataset is not None and self.format != "auto":
            raise ValueError("format: is for path: files; a dataset: is read by the datasets library")
        if self.prompt_tokens >= self.window_tokens:
            raise ValueError("prompt_tokens must be smaller than window_tokens")
        return self


def _model_in(annotation) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((m for m in map(_model_in, get_args(annotation)) if m is not None), None)


def _known_keys(model: type[BaseModel] | None, loc: tuple) -> list[str]:
    """The keys allowed where `loc` points (empty when the path leaves the typed sections)."""
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if model is not None else None
        model = _model_in(field.annotation) if field is not None else None
    return list(model.model_fields) if model is not None else []


def format_validation_error(error: ValidationError, source: str, model: type[BaseModel] | None = None) -> str:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        known = _known_keys(model, first["loc"])
        message = "unknown key" + (f"; known keys: {', '.join(known)}" if known else "")
    elif first["type"] == "missing":
        message = "required key is missing"
    return f"{source}: {where}: {message}"


def path_fields(node, where: str):
    """(config path, section) for every section under `node` that names a file or folder in `path`
    (data sources, the judge's model folder) or a data set in `dataset`. The one walk that resolves
    and checks paths."""
    if isinstance(node, BaseModel):
        if any(isinstance(getattr(node, key, None), str) for key in ("path", "dataset")):
            yield where.lstrip("."), node
        for name in type(node).model_fields:
            yield from path_fields(getattr(node, name), f"{where}.{name}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from path_fields(item, f"{where}[{index}]")
    elif isinstance(node, dict):
        for key, item in node.items():
            yield from path_fields(item, f"{where}.{key}")
