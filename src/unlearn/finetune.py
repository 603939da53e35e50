"""`unlearn finetune`: make a model memorise data, so that unlearning it can be measured.

A set-up step, not unlearning: the copyright preset first teaches the model a few chapters of a
book until their opening tokens make it recite them, then `unlearn run` removes them again. Sources
are read as `unlearn run` reads them (plain text cut into token windows, or the prompt/response
fields of JSONL/JSON/CSV/Parquet rows) and encoded the same way (raw text for windows, the chat
template or `template` for rows), so the unlearning run sees exactly the text that was memorised.
Training is a full fine-tune on the answer tokens (training/finetune.py). The output is a Hugging
Face folder (model, tokenizer and finetune.json: settings, epoch losses, wall time) that
`unlearn run` takes as model.name.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from unlearn.config import DataConfig, SourceConfig, format_validation_error
from unlearn.data.encoding import Encoded, PairEncoder
from unlearn.data.sources import (DataError, check_source, detect_format, local_input, read_fields, read_pairs,
                                  source_name)
from unlearn.errors import InputError
from unlearn.io import atomic_dir, atomic_write_json, inside
from unlearn.models.loading import check_causal_lm, check_weights, resolve_source

log = logging.getLogger(__name__)


PRECISIONS = ("auto", "bf16", "float32")  # auto: bf16 where the device multiplies it natively


class FinetuneError(InputError):
    pass


@dataclass
class FinetuneResult:
    output_dir: Path
    epoch_losses: list[float]
    rows: int
    seconds: float


def parse_data(spec: str | dict | SourceConfig, defaults: dict | None = None) -> SourceConfig:
    """One --data value: a file path, or a YAML mapping with a data source's keys, e.g.
    '{path: book.txt, skip: 1, limit: 44}' or '{dataset: ./saved, split: test}'; `defaults` (the
    command's --prompt, --window-tokens...) fill the keys it does not set."""
    if isinstance(spec, SourceConfig):
        return spec
    raw = spec
    if isinstance(spec, str):
        try:
            raw = yaml.safe_load(spec) if spec.lstrip().startswith("{") else {"path": spec}
        except yaml.YAMLError as exc:
            raise FinetuneError(f"--data {spec!r}: not a file name or a valid YAML mapping "
                                f"({getattr(exc, 'problem', exc)})") from None
    named = raw.get("path", raw.get("dataset")) if isinstance(raw, dict) else None
    if not isinstance(named, str):
        raise FinetuneError(f"--data {spec!r}: expected a file name or a mapping with path: or dataset:")
    try:
        return SourceConfig.model_validate({**(defaults or {}), **raw})
    except ValidationError as exc:
        raise FinetuneError(format_validation_error(exc, f"--data {named}", SourceConfig)) from None


def check_output_dir(output_dir: Path, inputs: list[Path], overwrite: bool) -> None:
    """The folder must be new or empty (or --overwrite), and never hold or sit inside an input."""
    if output_dir.exists() and not output_dir.is_dir():
        raise FinetuneError(f"{output_dir}: exists and is not a folder")
    out = output_dir.resolve()
    for path in inputs:
        path = path.resolve()
        if inside(out, path) or inside(path, out):
            raise FinetuneError(f"{output_dir}: would write over or inside the input {path}; inputs are never "
                                "written to, choose another output folder")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise FinetuneError(f"{output_dir}: is not empty; pass --overwrite to replace its contents")


def encode_rows(source: SourceConfig, tokenizer, template: str, max_length: int) -> list[Encoded]:
    """A source's rows as `unlearn run` encodes them: windows of plain text raw, rows with the template."""
    encoder = PairEncoder(tokenizer, "raw" if detect_format(source) == "text" else template, max_length)
    rows = [encoder.encode(pair.prompt, pair.response) for pair in read_pairs(source, tokenizer)]
    kept = [row for row in rows if row is not None]
    if not kept:
        raise DataError(f"{source_name(source)}: every row is longer than --max-length={max_length}")
    truncated = sum(row.truncated for row in kept)
    if truncated or len(kept) < len(rows):
        log.warning("%s: %d rows truncated to --max-length=%d, %d dropped (prompt alone too long)",
                    source_name(source), truncated, max_length, len(rows) - len(kept))
    return kept


def run_finetune(model: str, data: list[str | dict | SourceConfig], output_dir: str | Path, *, epochs: int,
             lr: float, batch_size: int = 8, seed: int = 0, template: str = "auto", max_length: int = 256,
             source_defaults: dict | None = None, overwrite: bool = False, trust_remote_code: bool = False,
             allow_pickle: bool = False, precision: str = "auto") -> FinetuneResult:
    """Full fine-tune of `model` on every row of `data`, saved to `output_dir` (a Hugging Face
    folder). Mirrors `unlearn finetune`; bad input fails before any weights are loaded."""
    output_dir = Path(output_dir)
    for name, value in (("--epochs", epochs), ("--lr", lr), ("--batch-size", batch_size), ("--max-length", max_length)):
        if not value > 0:
            raise FinetuneError(f"{name} must be positive, got {value}")
    if not data:
        raise FinetuneError("no --data given")
    if precision not in PRECISIONS:
        raise FinetuneError(f"--precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    try:
        DataConfig._template(template)  # the config's own check of data.template
    except ValueError as exc:
        raise FinetuneError(f"--template: {exc}") from None
    sources = [parse_data(spec, source_defaults) for spec in data]
    for source in sources:
        check_source(source, "--data")
        if detect_format(source) != "text":  # malformed rows and unknown fields fail now, not after loading
            read_fields(source, (source.prompt, source.response))
    kind, where = resolve_source(model)
    if kind == "folder":
        check_weights(Path(where), allow_pickle)
    if kind != "gguf":
        check_causal_lm(model, where, trust_remote_code)
    inputs = [path for s in sources if (path := local_input(s)) is not None] + ([Path(where)] if kind != "hub" else [])
    check_output_dir(output_dir, inputs, overwrite)

    from unlearn.models.loading import load_model, load_tokenizer
    from unlearn.models.precision import native_bf16
    from unlearn.training.finetune import finetune

    started = time.perf_counter()
    tokenizer = load_tokenizer(model, trust_remote_code)
    rows = [row for source in sources for row in encode_rows(source, tokenizer, template, max_length)]
    net, tokenizer = load_model(model, "float32", trust_remote_code, allow_pickle)
    log.info("fine-tuning on %d rows (%d answer tokens) for %d epochs", len(rows),
             sum(len(r.answer_ids) for r in rows), epochs)
    bf16 = native_bf16() if precision == "auto" else precision == "bf16"
    losses = finetune(net, rows, tokenizer.pad_token_id, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                      bf16=bf16)
    seconds = time.perf_counter() - started
    with atomic_dir(output_dir) as tmp:
        net.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        read = {"path", "dataset", "split", "subset", "prompt", "response", "format", "where", "skip", "limit",
                "window_tokens", "prompt_tokens"}
        atomic_write_json(tmp / "finetune.json", {
            "model": model, "data": [s.model_dump(include=read) for s in sources], "template": template,
            "max_length": max_length, "epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed,
            "precision": "bf16" if bf16 else "float32", "rows": len(rows),
            "epoch_losses": [round(x, 5) for x in losses], "seconds": round(seconds, 1)})
    return FinetuneResult(output_dir, losses, len(rows), seconds)
