"""Read (prompt, response) pairs from local JSONL, JSON, CSV, Parquet or plain-text files.

Structured files go through `datasets`; JSONL is checked line by line first so a malformed line
is reported as file:line. Plain text is cut into token windows (copyright task): the first
`prompt_tokens` tokens of each window are the prompt, the rest the response.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from unlearn.config import SourceConfig


class DataError(ValueError):
    """Bad user data; the message names the file, line or field."""


@dataclass(frozen=True)
class Pair:
    prompt: str
    response: str


FORMATS = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text",
           ".md": "text"}


def detect_format(source: SourceConfig) -> str:
    if source.format != "auto":
        return source.format
    suffix = Path(source.path).suffix.lower()
    if suffix not in FORMATS:
        raise DataError(f"{source.path}: cannot tell the format from the extension {suffix!r}; "
                        f"set format: to one of jsonl, json, csv, parquet, text")
    return FORMATS[suffix]


def _check_jsonl(path: Path) -> None:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: malformed JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")


def _read_table(path: Path, kind: str) -> list[dict]:
    import datasets

    datasets.disable_progress_bars()
    if kind == "jsonl":
        _check_jsonl(path)
        builder = "json"
    elif kind == "json":
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})") from None
        builder = "json"
    else:
        builder = kind
    if path.stat().st_size == 0:
        return []
    try:
        table = datasets.load_dataset(builder, data_files=str(path), split="train",
                                      keep_in_memory=True, cache_dir=None)
    except Exception as exc:  # datasets wraps parser errors in many types
        raise DataError(f"{path}: could not read as {kind} ({str(exc).splitlines()[0][:200]})") from None
    return table.to_list()


def _field(row: dict, name: str, path: Path, index: int, columns: list[str]) -> str:
    if name not in row:
        raise DataError(f"{path}: unknown field {name!r}; fields are: {', '.join(columns)}")
    value = row[name]
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):  # e.g. several reference answers: take the first
        value = value[0] if value else ""
    if not isinstance(value, (str, int, float)):
        raise DataError(f"{path}: row {index + 1}: field {name!r} is a {type(value).__name__}, expected text")
    return str(value)


def read_pairs(source: SourceConfig, tokenizer=None) -> list[Pair]:
    """All usable pairs of a source (rows with an empty prompt or response are skipped)."""
    path = Path(source.path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    kind = detect_format(source)
    if kind == "text":
        if tokenizer is None:
            raise DataError(f"{path}: plain-text data needs a tokenizer to cut token windows")
        pairs = text_windows(path.read_text(encoding="utf-8", errors="replace"), tokenizer,
                             source.window_tokens, source.prompt_tokens)
    else:
        rows = _read_table(path, kind)
        columns = list(rows[0].keys()) if rows else []
        pairs = []
        for index, row in enumerate(rows):
            prompt = _field(row, source.prompt, path, index, columns)
            response = _field(row, source.response, path, index, columns)
            if prompt.strip() and response.strip():
                pairs.append(Pair(prompt, response))
    pairs = pairs[source.skip:]
    if source.limit is not None:
        pairs = pairs[: source.limit]
    if not pairs:
        raise DataError(f"{path}: no usable rows (empty file, or every row has an empty "
                        f"{source.prompt!r} or {source.response!r})")
    return pairs


def text_windows(text: str, tokenizer, window_tokens: int, prompt_tokens: int) -> list[Pair]:
    """Consecutive non-overlapping windows of `window_tokens` tokens over whitespace-normalised
    paragraphs; the split into prompt and response falls on a token boundary."""
    ids = tokenizer(" ".join(text.split()), add_special_tokens=False)["input_ids"]
    pairs = []
    for start in range(0, len(ids) - window_tokens + 1, window_tokens):
        window = ids[start: start + window_tokens]
        pairs.append(Pair(tokenizer.decode(window[:prompt_tokens]), tokenizer.decode(window[prompt_tokens:])))
    return pairs
