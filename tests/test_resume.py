"""Kill -9 and --resume: a run killed mid-training (twice, each time some steps after its last
checkpoint) and resumed ends with the same losses and weights as an uninterrupted run; the
inputs (data files, model folder, caches) are byte-for-byte unchanged by all of it."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import FORGET_ROWS, NORMAL_ROWS, base_config, write_jsonl

STEPS, SAVE_EVERY = 24, 4


def unlearn(config: Path, out: Path, env: dict, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "unlearn.cli", "--quiet", "run", str(config), "-o", str(out),
                             *extra], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err


def logged_steps(out: Path) -> list[int]:
    path = out / "train_log.jsonl"
    lines = path.read_text().split("\n")[:-1] if path.exists() else []  # complete lines only
    return [json.loads(line)["step"] for line in lines]


def kill_after(proc: subprocess.Popen, out: Path, step: int) -> list[int]:
    """SIGKILL the run once it has logged `step` (some steps past a checkpoint), mid-training."""
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if len(logged_steps(out)) >= step:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it was killed: {proc.stderr.read()}"
    assert not (out / "summary.json").exists()
    return logged_steps(out)


def tree_hashes(*roots: Path) -> dict[str, str]:
    hashes = {}
    for root in roots:
        for path in sorted([root] if root.is_file() else root.rglob("*")):
            if path.is_file():
                hashes[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


@pytest.fixture(scope="module")
def runs(tiny_llama, tmp_path_factory):
    import csv

    root = tmp_path_factory.mktemp("resume")
    forget = write_jsonl(root / "forget.jsonl", FORGET_ROWS)
    normal = root / "normal.csv"
    with normal.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["Question", "Best Answer"])
        writer.writeheader()
        writer.writerows(NORMAL_ROWS)
    raw = base_config(tiny_llama, {"forget": forget, "normal": normal}, max_steps=STEPS, save_every=SAVE_EVERY)
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    caches = [root / "hf", root / "unlearn-cache"]
    for cache in caches:
        (cache / "entry").mkdir(parents=True)
        (cache / "entry" / "file").write_text("cached")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(caches[0]),
           "UNLEARN_CACHE": str(caches[1]), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    inputs = [tiny_llama, forget, normal, *caches]
    before = tree_hashes(*inputs)

    straight, killed = root / "straight", root / "killed"
    uninterrupted = unlearn(config, straight, env)  # runs alongside the first killed one
    cut = {"first": kill_after(unlearn(config, killed, env), killed, SAVE_EVERY + 2)}
    finish(uninterrupted)
    after_first_kill = sorted(p.name for p in (killed / "checkpoints").iterdir())
    cut["second"] = kill_after(unlearn(config, killed, env, "--resume"), killed, 3 * SAVE_EVERY + 3)
    finish(unlearn(config, killed, env, "--resume"))
    return {"straight": straight, "killed": killed, "cut": cut, "checkpoints_at_first_kill": after_first_kill,
            "hashes": (before, tree_hashes(*inputs))}


def test_killed_and_resumed_run_matches_the_uninterrupted_run(runs):
    straight, killed = runs["straight"], runs["killed"]
    # each kill landed after a checkpoint and before the end, with steps logged past the checkpoint
    assert runs["cut"]["first"][-1] > SAVE_EVERY and runs["cut"]["second"][-1] > 3 * SAVE_EVERY
    assert runs["cut"]["second"][-1] < STEPS
    assert any(name.startswith("step-") for name in runs["checkpoints_at_first_kill"])
    reference = [json.loads(line) for line in (straight / "train_log.jsonl").read_text().splitlines()]
    resumed = [json.loads(line) for line in (killed / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in resumed] == [r["step"] for r in reference] == list(range(1, STEPS + 1))
    for a, b in zip(reference, resumed):
        for key in ("loss", "forget_nll", "mismatch_nll", "normal_nll", "kl", "lr"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), (a["step"], key)
    weights_a = load_file(str(straight / "model" / "model.safetensors"))
    weights_b = load_file(str(killed / "model" / "model.safetensors"))
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:
        torch.testing.assert_close(weights_b[name], weights_a[name], rtol=1e-5, atol=1e-6)
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["steps"] == STEPS and summary["stop_reason"] == "max_steps" and not summary["diverged"]


def test_checkpoints_are_whole_and_only_the_newest_is_kept(runs):
    checkpoints = sorted((runs["killed"] / "checkpoints").iterdir())
    assert [p.name for p in checkpoints] == [f"step-{STEPS}"]
    assert sorted(p.name for p in checkpoints[0].iterdir()) == ["loop.json", "state.pt", "trainable.safetensors"]
    assert json.loads((checkpoints[0] / "loop.json").read_text())["step"] == STEPS


def test_inputs_are_never_modified(runs):
    before, after = runs["hashes"]
    assert len(before) > 5 and after == before


def test_checkpoint_restores_every_rng_and_loads_without_pickle(tmp_path):
    import random

    import numpy as np
    from transformers import get_linear_schedule_with_warmup

    from unlearn.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, 10)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    save_checkpoint(tmp_path, 1, model, optimizer, scheduler, {"last_good": 1})
    save_checkpoint(tmp_path, 2, model, optimizer, scheduler, {"last_good": 2})
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-2"]
    draws = (np.random.rand(), random.random(), torch.rand(1).item())
    restore = torch.nn.Linear(3, 2)
    optimizer_b = torch.optim.AdamW(restore.parameters(), lr=1e-3)
    scheduler_b = get_linear_schedule_with_warmup(optimizer_b, 0, 10)
    state = load_checkpoint(latest_checkpoint(tmp_path), restore, optimizer_b, scheduler_b)  # weights_only load
    assert state == {"step": 2, "last_good": 2}
    assert torch.equal(restore.weight, model.weight) and scheduler_b.get_last_lr() == scheduler.get_last_lr()
    assert optimizer_b.state_dict()["state"][0]["exp_avg"].equal(optimizer.state_dict()["state"][0]["exp_avg"])
    assert (np.random.rand(), random.random(), torch.rand(1).item()) == draws


def test_lora_run_resumes_after_a_crash(tiny_llama, qa_files, tmp_path, monkeypatch):
    """A run that fails mid-way (exit 1) resumes from its checkpoint to the uninterrupted result."""
    from typer.testing import CliRunner

    from unlearn.cli import app
    from unlearn.io import append_jsonl

    raw = base_config(tiny_llama, qa_files, max_steps=5, save_every=2)
    raw["model"]["lora"] = {"r": 2, "alpha": 4}
    raw["output"]["save"] = "adapter"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))

    def run(out, *extra):
        return CliRunner().invoke(app, ["run", str(config), "-o", str(out), *extra])

    assert run(tmp_path / "straight").exit_code == 0

    def crash_at_step_4(path, row):
        if row.get("step") == 4:
            raise RuntimeError("simulated crash")
        append_jsonl(path, row)

    monkeypatch.setattr("unlearn.training.tracking.append_jsonl", crash_at_step_4)
    crashed = run(tmp_path / "crashed")
    assert crashed.exit_code == 1 and "run failed: RuntimeError: simulated crash" in crashed.stderr
    assert logged_steps(tmp_path / "crashed") == [1, 2, 3]
    monkeypatch.undo()
    assert run(tmp_path / "crashed", "--resume").exit_code == 0
    logs = [[json.loads(line)["loss"] for line in (tmp_path / name / "train_log.jsonl").read_text().splitlines()]
            for name in ("straight", "crashed")]
    assert logs[1] == pytest.approx(logs[0], rel=1e-5)
    a, b = (load_file(str(tmp_path / name / "adapter" / "adapter_model.safetensors")) for name in ("straight", "crashed"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
