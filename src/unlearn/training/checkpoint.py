"""Resumable checkpoints: trainable weights, optimizer, scheduler, RNG states and loop state,
written atomically under OUTPUT/checkpoints/step-N (only the newest is kept)."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from unlearn.io import atomic_dir
from unlearn.layout import RunFolder
from unlearn.models.prepare import load_trainable_state, trainable_state


def checkpoint_root(output_dir: Path) -> Path:
    return RunFolder(output_dir).checkpoints


def latest_checkpoint(output_dir: Path) -> Path | None:
    root = checkpoint_root(output_dir)
    found = sorted(root.glob("step-*"), key=lambda p: int(p.name.split("-")[1])) if root.exists() else []
    return found[-1] if found else None


def save_checkpoint(output_dir: Path, step: int, model, optimizer, scheduler, loop_state: dict) -> Path:
    target = checkpoint_root(output_dir) / f"step-{step}"
    with atomic_dir(target) as tmp:
        save_file({k: v.contiguous() for k, v in trainable_state(model).items()}, str(tmp / "trainable.safetensors"))
        kind, keys, position, has_gauss, gauss = np.random.get_state()
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "torch_rng": torch.get_rng_state(), "python_rng": random.getstate(),
                    "numpy_rng": [kind, keys.tolist(), position, has_gauss, gauss],
                    "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
                   tmp / "state.pt")
        (tmp / "loop.json").write_text(json.dumps({"step": step, **loop_state}))
    # the new checkpoint is complete: drop older ones and temp folders left by a killed save
    for older in checkpoint_root(output_dir).iterdir():
        if older != target and older.name.lstrip(".").startswith("step-"):  # (best-step-* is the selector's)
            shutil.rmtree(older, ignore_errors=True)
    return target


def load_checkpoint(path: Path, model, optimizer, scheduler) -> dict:
    load_trainable_state(model, load_file(str(path / "trainable.safetensors")))
    # tensors and plain values only, so the safe unpickler reads it (no code runs on load)
    state = torch.load(path / "state.pt", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    random.setstate(state["python_rng"])
    kind, keys, position, has_gauss, gauss = state["numpy_rng"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), position, has_gauss, gauss))
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return json.loads((path / "loop.json").read_text())


def load_weights_only(path: Path, model) -> None:
    load_trainable_state(model, load_file(str(path / "trainable.safetensors")))
