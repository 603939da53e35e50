"""Checks that run before any heavy work (no weights loaded), so bad input fails in seconds with a
one-line error naming the file, line or field. `run()` (so `unlearn run`, `compare`, the demo)
calls `preflight` first."""
from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from unlearn.config import ConfigError, RunConfig, dump_config, path_fields
from unlearn.data.sources import check_source, detect_format, local_input, read_fields
from unlearn.io import inside
from unlearn.layout import OutputDirError, RunFolder
from unlearn.models.loading import check_causal_lm, check_weights, resolve_source
from unlearn.objectives.resolve import resolve_method

# keys that may change between a run and its --resume: they do not change the steps already taken
RESUMABLE_CHANGES = ("train.max_steps", "train.save_every", "train.log_every", "train.report_to",
                     "model.trust_remote_code", "model.allow_pickle", "output", "eval")


def preflight(config: RunConfig, output_dir: Path, *, resume: bool = False, overwrite: bool = False) -> dict[str, int]:
    """Every check; returns the rows each structured data source gives (after where:, skip, limit)."""
    output_dir = Path(output_dir)
    resolve_method(config.method)
    rows = {}
    for where, source in _data_files(config.data, "data"):
        check_source(source, f"{where}.path")
        if detect_format(source) != "text":  # malformed lines, unknown fields, nothing left after filtering
            rows[where] = len(read_fields(source, _fields(config.data, source)))
    for section, name in ((config.eval, "eval"), (config.select, "select")):
        for where, source in _data_files(section, name):
            check_source(source, f"{where}.path")
    if config.select is not None and config.eval is None and config.select.eval is None:
        raise ConfigError("select: needs an eval: section (or select.eval) to validate with")
    _check_trackers(config)
    model_folder = _check_model(config)
    _check_output_dir(config, output_dir, model_folder, resume, overwrite)
    _check_disk(config, output_dir, model_folder)
    return rows


def _fields(data, source) -> tuple[str, ...]:
    if source is data.forget and source.source == "self":  # the model writes the answers: maybe prompts only
        from unlearn.training.onpolicy import forget_fields

        return forget_fields(data)
    if source.source == "original":  # the original model writes the answers
        return (source.prompt,)
    return (source.prompt, source.response)


def _data_files(node, where: str):
    """(config path, source) for every data file named under a config section (not model folders)."""
    return [(at, source) for at, source in path_fields(node, where) if "format" in type(source).model_fields]


def _check_trackers(config: RunConfig) -> None:
    """accelerate skips a tracker whose package is missing without a word: say so before training."""
    from accelerate.tracking import get_available_trackers
    from accelerate.utils import LoggerType

    for name in config.train.trackers:
        if LoggerType(name) not in get_available_trackers():
            raise ConfigError(f"train.report_to: {name} needs the {name} package, which is not installed "
                              f"(pip install {name})")


def _check_model(config: RunConfig) -> Path | None:
    """Alias, path and config.json checks; the local folder (or GGUF file) when there is one."""
    kind, where = resolve_source(config.model.name)
    if kind == "gguf":
        return Path(where)
    check_causal_lm(config.model.name, where, config.model.trust_remote_code)
    if kind == "folder":
        check_weights(Path(where), config.model.allow_pickle)
        return Path(where)
    return None


def _check_output_dir(config: RunConfig, output_dir: Path, model_folder: Path | None, resume: bool,
                      overwrite: bool) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputDirError(f"{output_dir}: exists and is not a folder")
    out = output_dir.resolve()
    inputs = [path.resolve() for _, s in _data_files(config.data, "data") if (path := local_input(s)) is not None]
    if model_folder is not None:
        model_folder = model_folder.resolve()
        if model_folder.is_dir() and inside(out, model_folder):
            raise OutputDirError(f"{output_dir}: is inside the model folder {model_folder}; inputs are never "
                                 "written to, choose another output folder")
        inputs.append(model_folder)
    for path in inputs:
        for name in (*RunFolder.FOLDERS, *RunFolder.FILES):  # what the run writes, or --overwrite removes
            if inside(path, out / name):
                raise OutputDirError(f"{output_dir}: the run would write or replace {out / name}, which holds "
                                     f"the input {path}; choose another output folder")
    RunFolder(output_dir).refuse_existing_run(resume, overwrite)
    saved = RunFolder(output_dir).config
    if resume and saved.is_file():
        changed = _first_change(yaml.safe_load(saved.read_text()), yaml.safe_load(dump_config(config)))
        if changed:
            raise ConfigError(f"{saved}: {changed} differs from this run's config; --resume "
                              "continues the same run (only train.max_steps, train.save_every, train.log_every, "
                              "output and eval may change)")


def _first_change(saved, current, where: str = "") -> str | None:
    if where.lstrip(".") in RESUMABLE_CHANGES:
        return None
    if isinstance(saved, dict) and isinstance(current, dict):
        for key in dict.fromkeys([*saved, *current]):
            found = _first_change(saved.get(key), current.get(key), f"{where}.{key}")
            if found:
                return found
        return None
    return where.lstrip(".") if saved != current else None


def _check_disk(config: RunConfig, output_dir: Path, model_folder: Path | None) -> None:
    probe = output_dir
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    need = _estimate_output_bytes(config, model_folder)
    if need and free < need:
        raise OutputDirError(f"{output_dir}: {format_bytes(free)} free, the run needs about {format_bytes(need)} "
                             "(saved model and checkpoints)")


def format_bytes(count: int) -> str:
    return f"{count / 2**30:.1f} GiB" if count >= 2**30 else f"{count / 2**20:.1f} MiB"


def _estimate_output_bytes(config: RunConfig, model_folder: Path | None) -> int:
    """Rough size of what a run writes, from the size of the weights on disk (0: unknown, a hub id)."""
    if model_folder is None:
        return 0
    if model_folder.is_dir():
        weights = sum(p.stat().st_size for p in model_folder.glob("*.safetensors"))
        weights = weights or sum(p.stat().st_size for p in model_folder.glob("*.bin"))
    else:
        weights = model_folder.stat().st_size * 4  # a quantised GGUF grows when dequantised
    saved = config.output.save in ("merged", "both")
    # a full fine-tune checkpoint holds the weights and two AdamW moments; the old one is deleted
    # only after the new one is complete, so two can coexist
    checkpoints = 6 if config.train.save_every and config.model.lora is None else 0
    return int(weights * max(saved + checkpoints, 1))
