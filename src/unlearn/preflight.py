"""Checks that run before any heavy work, so bad input fails in seconds with a one-line error."""
from __future__ import annotations

import shutil
from pathlib import Path

from unlearn.config import RunConfig
from unlearn.data.sources import DataError, detect_format
from unlearn.objectives.methods import resolve_method
from unlearn.run import RUN_MARKERS, OutputDirError


def preflight(config: RunConfig, output_dir: Path, *, resume: bool = False, overwrite: bool = False) -> None:
    resolve_method(config.method)
    sources = [("data.forget", config.data.forget)]
    sources += [(f"data.normal[{i}]", s) for i, s in enumerate(config.data.normal)]
    sources += [(f"data.mismatch_pool[{i}]", s) for i, s in enumerate(config.data.mismatch_pool or [])]
    for where, source in sources:
        if not Path(source.path).expanduser().is_file():
            raise DataError(f"{source.path}: data file not found ({where}.path)")
        detect_format(source)
    held = [m for m in RUN_MARKERS if (output_dir / m).exists()]
    if held and not (resume or overwrite):
        raise OutputDirError(f"{output_dir}: already holds a run ({held[0]}); pass --overwrite to replace it "
                             "or --resume to continue it")
    probe = output_dir if output_dir.exists() else output_dir.parent
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    need = _estimate_output_bytes(config)
    if need and free < need:
        raise OutputDirError(f"{output_dir}: {free / 2**30:.1f} GiB free, the model needs about "
                             f"{need / 2**30:.1f} GiB (checkpoints and saved weights)")


def _estimate_output_bytes(config: RunConfig) -> int:
    """Rough size of what a run writes: the saved model plus one checkpoint."""
    from unlearn.models.loading import resolve_source

    try:
        kind, where = resolve_source(config.model.name)
    except Exception:  # noqa: BLE001 - resolution errors are reported by the loader itself
        return 0
    if kind == "hub":
        return 0
    folder = Path(where) if kind == "folder" else None
    weights = sum(p.stat().st_size for p in folder.glob("*.safetensors")) if folder else Path(where).stat().st_size * 4
    copies = (config.output.save in ("merged", "both")) + (config.train.save_every is not None) * 3
    return int(weights * max(copies, 1))
