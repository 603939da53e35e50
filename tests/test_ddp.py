"""Real multi-process training on CPU: `accelerate launch` with 2 gloo processes on a tiny llama.

Two processes taking one step batch each must train exactly what one process trains with
grad_accum=2 (the same global batch, see unlearn/training/distributed.py). The processes are
launched through the real CLI by a small wrapper that records, per process, the gradients the
optimizer receives (after DDP's all-reduce) and the process's own losses before averaging.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import FORGET_ROWS, base_config, write_jsonl
from unlearn.io import read_jsonl
from unlearn.run import run

WRAPPER = '''
import json, os, sys
import torch
import unlearn.training.loop as loop
from unlearn.cli import app

rank, record = int(os.environ["RANK"]), {"world": int(os.environ["WORLD_SIZE"]), "grads": [], "local": []}
step = torch.optim.AdamW.step

def recording_step(self, *args, **kwargs):
    grads = [p.grad.double() for group in self.param_groups for p in group["params"] if p.grad is not None]
    record["grads"].append([x for g in grads for x in g.flatten()[:64].tolist() + [float(g.sum())]])
    return step(self, *args, **kwargs)

agreed = loop.agreed_row

def recording_agreed_row(accelerator, row, tokens):
    record["local"].append(row["loss"])
    return agreed(accelerator, row, tokens)

torch.optim.AdamW.step = recording_step
loop.agreed_row = recording_agreed_row
try:
    app(sys.argv[2:], standalone_mode=False)
finally:
    folder = os.path.join(sys.argv[1], "ranks")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"rank{rank}.json"), "w") as out:
        json.dump(record, out)
'''

LONG_ANSWER = " ".join(["Here is how to pick a lock with a pin."] * 8)  # long rows: length buckets split


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_two_process_ddp_matches_one_process_with_the_same_global_batch(lora, tiny_llama, qa_files, tmp_path):
    write_jsonl(qa_files["forget"], FORGET_ROWS + [{"question": "How do I pick a lock fast?", "answer": LONG_ANSWER}])
    config = base_config(tiny_llama, qa_files, max_steps=3)
    config["data"]["max_length"] = 128
    if lora:
        config["model"]["lora"] = {"r": 4, "alpha": 8}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(WRAPPER)

    ddp_dir = tmp_path / "ddp"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    # `--cpu --num_processes 2` would start ONE process: accelerate spawns CPU processes only via
    # mpirun; --multi_gpu on a machine without GPUs starts 2 processes that talk over gloo
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(free_port()), str(wrapper), str(ddp_dir),
              "--quiet", "run", str(path), "-o", str(ddp_dir)]
    done = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]

    ranks = [json.loads((ddp_dir / "ranks" / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]  # both processes ran, in one world of 2
    assert len(ranks[0]["grads"]) == len(ranks[1]["grads"]) == 3
    for step0, step1 in zip(ranks[0]["grads"], ranks[1]["grads"]):  # after the all-reduce: the same gradients
        torch.testing.assert_close(torch.tensor(step0), torch.tensor(step1), atol=1e-10, rtol=0)
    local = [r["local"] for r in ranks]
    assert all(abs(a - b) > 1e-6 for a, b in zip(*local))  # ... from different batches

    single_dir = tmp_path / "single"
    single = yaml.safe_load(path.read_text())
    single["train"]["grad_accum"] = 2  # one process, the same global batch
    single_path = tmp_path / "single.yaml"
    single_path.write_text(yaml.safe_dump(single))
    run(single_path, single_dir)

    ddp_log, single_log = read_jsonl(ddp_dir / "train_log.jsonl"), read_jsonl(single_dir / "train_log.jsonl")
    assert [r["step"] for r in ddp_log] == [1, 2, 3]
    for ddp_row, single_row, *rank_losses in zip(ddp_log, single_log, *local):
        assert ddp_row["loss"] == pytest.approx(sum(rank_losses) / 2, abs=1e-6)  # the log shows the global batch
        assert ddp_row["loss"] == pytest.approx(single_row["loss"], abs=1e-5)
        assert ddp_row["tokens"] == single_row["tokens"]
    assert json.loads((ddp_dir / "summary.json").read_text())["processes"] == 2

    trained = load_file(ddp_dir / "model" / "model.safetensors")
    expected = load_file(single_dir / "model" / "model.safetensors")
    assert trained.keys() == expected.keys()
    original = load_file(tiny_llama / "model.safetensors")
    assert any((trained[k] - original[k]).abs().max() > 1e-4 for k in original)  # training moved the weights
    for key in expected:
        torch.testing.assert_close(trained[key], expected[key], atol=2e-5, rtol=1e-4)
