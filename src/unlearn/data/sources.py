"""Read (prompt, response) pairs from local JSONL, JSON, CSV, Parquet or plain-text files, or from a
Hugging Face data set.

Files are read with the standard library (Parquet with pyarrow), so values arrive exactly as
written (no '007' -> 7.0, no 'NA' -> missing), nothing is written to a cache, and errors name
file:line. Plain text is cut into token windows (copyright task): the first `prompt_tokens`
tokens of each window are the prompt, the rest the response. A `dataset:` source is read with the
`datasets` library (a folder written by `save_to_disk`, or a hub id from the local cache); its rows
are dicts like a JSON file's, so field mapping, `where:`, `skip` and `limit` work the same.
"""
from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from unlearn.config import SourceConfig
from unlearn.errors import InputError, hub_error

log = logging.getLogger(__name__)


class DataError(InputError):
    """Bad user data; the message names the file, line or field."""


@dataclass(frozen=True)
class Pair:
    prompt: str
    response: str


FORMATS = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text",
           ".md": "text"}


def is_dataset(source) -> bool:
    return getattr(source, "dataset", None) is not None  # an eval AnswerSource names files only


def source_name(source) -> str:
    """What messages call a source: its file, or its data set (subset, split)."""
    if not is_dataset(source):
        return source.path
    subset, split = f" ({source.subset})" if source.subset else "", f"[{source.split}]" if source.split else ""
    return source.dataset + subset + split


def local_input(source) -> Path | None:
    """The local file or folder a source reads (None for a hub data set): never written to."""
    path = Path(source.dataset if is_dataset(source) else source.path).expanduser()
    return path if not is_dataset(source) or path.is_dir() else None


def check_source(source, where: str) -> None:
    """Fail now, naming the config key `where`, when a file is missing or a data set does not open."""
    if is_dataset(source):
        open_dataset(source)
    elif not Path(source.path).expanduser().is_file():
        raise DataError(f"{source.path}: data file not found ({where})")


def detect_format(source: SourceConfig) -> str:
    """jsonl | json | csv | parquet | text for a file; dataset for a Hugging Face data set."""
    if is_dataset(source):
        return "dataset"
    if source.format != "auto":
        return source.format
    suffix = Path(source.path).suffix.lower()
    if suffix not in FORMATS:
        raise DataError(f"{source.path}: cannot tell the format from the extension {suffix!r}; "
                        f"set format: to one of jsonl, json, csv, parquet, text")
    return FORMATS[suffix]


def _decode(data: bytes, path: Path, line: int | None = None) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = line or data[:exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte {data[exc.start]:#04x})") from None


def _jsonl_rows(path: Path) -> list[tuple[str, dict]]:
    rows = []
    for number, raw in enumerate(path.read_bytes().split(b"\n"), 1):
        line = _decode(raw, path, number)
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: malformed JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        rows.append((f"{path}:{number}", row))
    return rows


def _json_rows(path: Path) -> list[tuple[str, dict]]:
    text = _decode(path.read_bytes(), path)
    if not text.strip():
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # one object per line in a .json file (as TOFU publishes its sets)
            return _jsonl_rows(path)
        raise DataError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})") from None
    if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
        columns = list(data)  # column-oriented: {"question": [...], "answer": [...]}
        if len({len(v) for v in data.values()}) > 1:
            raise DataError(f"{path}: columns have different lengths ({', '.join(columns)})")
        data = [dict(zip(columns, values)) for values in zip(*data.values())]
    if isinstance(data, list) and data and all(isinstance(row, str) for row in data):
        data = [{"text": text} for text in data]  # a list of texts (MUSE's privleak files): field `text`
    if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
        raise DataError(f"{path}: expected a list of JSON objects (or an object of equal-length lists, "
                        "or a list of texts)")
    return [(f"{path}: item {index + 1}", row) for index, row in enumerate(data)]


def _csv_rows(path: Path) -> list[tuple[str, dict]]:
    # the csv module keeps every cell as written: '007' stays '007', 'NA' stays 'NA'; strict, so a
    # stray quote is an error instead of a cell that swallows the rows after it
    csv.field_size_limit(2**31 - 1)
    reader = csv.DictReader(io.StringIO(_decode(path.read_bytes(), path), newline=""), strict=True)
    rows, start = [], 1  # the line where the record being read starts
    try:
        reader.fieldnames  # reads the header
        start = reader.line_num + 1
        for row in reader:
            rows.append((f"{path}:{start}", {k: v for k, v in row.items() if k is not None}))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise DataError(f"{path}:{start}: malformed CSV ({exc})") from None
    return rows


def _parquet_rows(path: Path) -> list[tuple[str, dict]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise DataError(f"{path}: could not read as parquet ({str(exc).splitlines()[0][:200]})") from None
    return [(f"{path}: row {index + 1}", row) for index, row in enumerate(table.to_pylist())]


READERS = {"jsonl": _jsonl_rows, "json": _json_rows, "csv": _csv_rows, "parquet": _parquet_rows}


def open_dataset(source):
    """The split a `dataset:` source names, as a `datasets.Dataset` (memory-mapped, not yet read):
    from a folder written by `save_to_disk`, or a hub id from the local cache (with HF_HUB_OFFLINE=1
    nothing is downloaded, and a data set that is not cached fails with one line)."""
    import datasets

    name = source.dataset
    folder = Path(name).expanduser()
    if folder.is_dir():
        if source.subset is not None:
            raise DataError(f"{name}: subset: names a configuration of a hub data set; a save_to_disk folder has none")
        try:
            loaded = datasets.load_from_disk(str(folder))
        except FileNotFoundError:
            raise DataError(f"{folder}: not a folder written by save_to_disk (no dataset_dict.json or "
                            "state.json); for data files use path:") from None
    elif name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise DataError(f"{name}: data set folder not found")
    else:
        try:
            loaded = datasets.load_dataset(name, source.subset)
        except (OSError, ValueError) as exc:  # not cached offline (ConnectionError), unknown id or subset
            offline = datasets.config.HF_HUB_OFFLINE and isinstance(exc, OSError)
            raise DataError(hub_error(name, exc, offline)) from None
    if isinstance(loaded, datasets.DatasetDict):
        splits = list(loaded)
        split = source.split or ("train" if "train" in splits or len(splits) != 1 else splits[0])
        if split not in loaded:
            raise DataError(f"{name}: no split {split!r}; splits are: {', '.join(splits)}")
        return loaded[split]
    if source.split is not None and source.split != loaded.split:
        raise DataError(f"{name}: holds one split ({loaded.split or 'saved without a name'}), not "
                        f"{source.split!r}; leave out split:")
    return loaded


def _rows(source) -> tuple[str, list[tuple[str, dict]], list[str]]:
    """(what messages call the source, its rows with where each one is, its field names)."""
    if is_dataset(source):
        name, dataset = source_name(source), open_dataset(source)
        rows = [(f"{name} row {index + 1}", row) for index, row in enumerate(dataset.to_list())]
        return name, rows, dataset.column_names
    path = Path(source.path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    rows = READERS[detect_format(source)](path)
    return str(path), rows, list(dict.fromkeys(key for _, row in rows for key in row))


def _field(row: dict, name: str, where: str) -> str:
    if name not in row:
        raise DataError(f"{where}: no field {name!r} in this row (it has: {', '.join(map(str, row))})")
    value = row[name]
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):  # e.g. several reference answers: take the first
        value = value[0] if value else ""
    if not isinstance(value, (str, int, float)):
        raise DataError(f"{where}: field {name!r} is a {type(value).__name__}, expected text")
    value = str(value)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a JSON escape such as "\ud800"
        raise DataError(f"{where}: field {name!r} is not valid unicode (lone surrogate)") from None
    return value


def _texts(row: dict, name: str, where: str) -> tuple[str, ...]:
    """A field that holds several texts (a list; a single text is a list of one), empty ones left out."""
    value = row.get(name)
    items = value if isinstance(value, (list, tuple)) else [value]
    return tuple(text for text in (_field({name: item}, name, where) for item in items) if text.strip())


def read_fields(source, names: tuple[str, ...], lists: tuple[str, ...] = ()) -> list[tuple]:
    """The named fields of every row of a structured file (jsonl, json, csv, parquet) or data set, as text (the
    fields in `lists` as a tuple of texts, e.g. TOFU's perturbed answers). Rows with an empty field
    are skipped (with a warning); then `skip` and `limit` apply."""
    path, rows, columns = _rows(source)
    for name in names:
        if rows and name not in columns:
            raise DataError(f"{path}: unknown field {name!r}; fields are: {', '.join(map(str, columns))}")
    if source.where:
        rows = _filtered(rows, source.where, path, columns)
    records = []
    for where, row in rows:
        values = tuple(_texts(row, name, where) if name in lists else _field(row, name, where) for name in names)
        if all(value if isinstance(value, tuple) else value.strip() for value in values):
            records.append(values)
    if len(records) < len(rows):
        log.warning("%s: %d rows skipped (an empty %s)", path, len(rows) - len(records), " or ".join(map(repr, names)))
    records = records[source.skip:]
    records = records[: source.limit] if source.limit is not None else records
    if not records:
        raise DataError(f"{path}: no usable rows (empty file, or every row has an empty "
                        f"{' or '.join(map(repr, names))})")
    return records


def _filtered(rows: list[tuple[str, dict]], where: dict, path: str, columns: list) -> list[tuple[str, dict]]:
    """The rows whose fields equal `where`'s values (text compares without case: a CSV cell is text)."""
    for name in where:
        if rows and name not in columns:
            raise DataError(f"{path}: where: unknown field {name!r}; fields are: {', '.join(map(str, columns))}")

    def equal(value, wanted) -> bool:
        return value == wanted or str(value).strip().lower() == str(wanted).strip().lower()

    kept = [(at, row) for at, row in rows if all(equal(row.get(k), v) for k, v in where.items())]
    if rows and not kept:
        raise DataError(f"{path}: no row has {', '.join(f'{k} = {v!r}' for k, v in where.items())} (where:)")
    return kept


def read_pairs(source: SourceConfig, tokenizer=None) -> list[Pair]:
    """All usable pairs of a source (rows with an empty prompt or response are skipped)."""
    if detect_format(source) != "text":
        return [Pair(*fields) for fields in read_fields(source, (source.prompt, source.response))]
    path = Path(source.path).expanduser()
    if source.where:
        raise DataError(f"{path}: where: filters the rows of a structured file; plain text has no fields")
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    if tokenizer is None:
        raise DataError(f"{path}: plain-text data needs a tokenizer to cut token windows")
    pairs = text_windows(path.read_text(encoding="utf-8", errors="replace"), tokenizer,
                         source.window_tokens, source.prompt_tokens)[source.skip:]
    pairs = pairs[: source.limit] if source.limit is not None else pairs
    if not pairs:
        raise DataError(f"{path}: no text windows of {source.window_tokens} tokens (the file is shorter, "
                        "or skip: is past the end)")
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
