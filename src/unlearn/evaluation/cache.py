"""A cache of the original model's evaluation ("before" stage), shared by runs.

Every run, compare method and sweep point on the same model, data and `eval:` section evaluates the
same original model: minutes of generation each time on a CPU. The before stage is a pure function
of the model's files, the eval settings, the data settings it reads (not the sources' mixing weights,
the mismatch pool or on-policy sampling), the data files' bytes, this package's code and
the library versions, so it is stored under UNLEARN_CACHE/eval/<key>.json and reused when every one
of them matches.
UNLEARN_EVAL_CACHE=0 turns it off. Models from the hub (no local files to fingerprint) are not cached.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def enabled() -> bool:
    return os.environ.get("UNLEARN_EVAL_CACHE", "1") not in ("0", "false", "no", "")


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fingerprint(path: Path):
    """A file's content hash; a folder's file names, sizes and modification times (model weights)."""
    if path.is_file():
        return _file_digest(path)
    if path.is_dir():
        return sorted((str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns)
                      for p in path.rglob("*") if p.is_file())
    return None


def _code_digest() -> str:
    """This package's source: a change to any of it (a metric, the encoding) misses the cache."""
    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + path.read_bytes())
    return digest.hexdigest()


def _paths(node) -> list[str]:
    """Every `path` string in a nested dict / list (data sources, eval tasks, judge folders), and every
    `dataset:` (a save_to_disk folder is fingerprinted like a model folder; a hub id has no local files)."""
    if isinstance(node, dict):
        found = [node[key] for key in ("path", "dataset") if isinstance(node.get(key), str)]
        return found + [p for value in node.values() for p in _paths(value)]
    if isinstance(node, list):
        return [p for value in node for p in _paths(value)]
    return []


def model_fingerprint(name: str, dtype: str):
    """The model's local files (None for a hub id: nothing local to tell versions apart)."""
    from unlearn.models.loading import ModelError, resolve_source

    try:
        kind, where = resolve_source(name)
    except ModelError:
        return None
    return None if kind == "hub" else [kind, str(Path(where).resolve()), _fingerprint(Path(where)), dtype]


def _by_content(node, prints: dict):
    """`node` with every local `path` / `dataset` replaced by its file's fingerprint: the same bytes
    under another name (a run folder's copy of the original's answers) give the same key."""
    if isinstance(node, dict):
        return {key: (prints[value] if key in ("path", "dataset") and isinstance(value, str)
                      and prints.get(value) is not None else _by_content(value, prints))
                for key, value in node.items()}
    if isinstance(node, list):
        return [_by_content(value, prints) for value in node]
    return node


# data settings that only training reads: a sweep over them evaluates the same original
TRAINING_ONLY = ("mismatch_pool", "onpolicy")


def _read_by_eval(data_settings: dict) -> dict:
    """The data section without what the evaluation never reads (the mixing weights of the sources,
    the mismatch pool, on-policy sampling); the sources' rows, the template and max_length stay."""
    def rows_only(source: dict) -> dict:
        return {k: v for k, v in source.items() if k != "weight"}

    kept = {k: v for k, v in data_settings.items() if k not in TRAINING_ONLY}
    if "forget" in kept:
        kept["forget"] = rows_only(kept["forget"])
    kept["normal"] = [rows_only(source) for source in kept.get("normal", [])]
    return kept


def cache_key(model: list | None, eval_settings: dict, data_settings: dict) -> str | None:
    if model is None or not enabled():
        return None
    import torch
    import transformers

    data_settings = _read_by_eval(data_settings)
    prints = {p: _fingerprint(Path(p).expanduser()) for p in set(_paths([eval_settings, data_settings]))}
    text = json.dumps([model, _by_content(eval_settings, prints), _by_content(data_settings, prints),
                       _code_digest(), torch.__version__, transformers.__version__], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _path(key: str) -> Path:
    from unlearn.models.loading import cache_dir

    return cache_dir() / "eval" / f"{key}.json"


def load(key: str | None) -> dict | None:
    if key is None or not _path(key).is_file():
        return None
    try:
        return json.loads(_path(key).read_text())
    except (OSError, ValueError):  # a damaged entry is ignored and rewritten
        return None


def store(key: str | None, entry: dict) -> None:
    if key is None:
        return
    from unlearn.io import atomic_write_json

    try:
        atomic_write_json(_path(key), entry)
    except OSError as exc:  # a read-only cache must not fail the run
        log.warning("could not cache the original model's evaluation: %s", exc)
