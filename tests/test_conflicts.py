"""Conflict-free updates (train.project_conflicts, PCGrad): the projection by hand, and runs."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import base_config
from unlearn.config import ConfigError, load_config
from unlearn.training.loop import project_conflict


def flat(grads):
    return torch.cat([g.flatten() for g in grads])


def test_a_conflicting_forget_gradient_loses_its_component_along_the_normal_one():
    forget = [torch.tensor([1.0, -2.0]), torch.tensor([[0.5]])]
    normal = [torch.tensor([-1.0, 1.0]), torch.tensor([[1.0]])]
    # dot = -1 - 2 + 0.5 = -2.5 < 0, |normal|^2 = 3: forget - (-2.5 / 3) normal
    projected, cosine = project_conflict(forget, normal)
    assert cosine == pytest.approx(-2.5 / (5.25 ** 0.5 * 3 ** 0.5))
    torch.testing.assert_close(flat(projected), flat(forget) + 2.5 / 3 * flat(normal))
    assert float(flat(projected) @ flat(normal)) == pytest.approx(0.0, abs=1e-6)  # orthogonal now
    assert [p.shape for p in projected] == [g.shape for g in forget]


def test_gradients_that_agree_are_left_as_they_are():
    forget = [torch.tensor([1.0, 2.0])]
    for normal in ([torch.tensor([1.0, 0.5])], [torch.tensor([-2.0, 1.0])]):  # dot 2 > 0; dot 0
        projected, cosine = project_conflict(forget, normal)
        assert cosine >= 0 and torch.equal(projected[0], forget[0])
    projected, cosine = project_conflict(forget, [torch.zeros(2)])  # no normal gradient: nothing to protect
    assert cosine == 0.0 and torch.equal(projected[0], forget[0])


@pytest.mark.parametrize("lora,accum", [(True, 1), (False, 2)], ids=["lora", "full-accum2"])
def test_a_run_with_project_conflicts_logs_the_cosine_and_moves_the_model(lora, accum, tiny_llama, qa_files, tmp_path):
    from unlearn.run import run

    raw = base_config(tiny_llama, qa_files, max_steps=3, grad_accum=accum, project_conflicts=True)
    if lora:
        raw["model"]["lora"] = {"r": 2, "alpha": 4}
        raw["output"] = {"save": "adapter"}
    result = run(load_config(raw=raw), tmp_path / "out")
    rows = [json.loads(line) for line in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(-1 <= row["grad_cosine"] <= 1 and row["grad_norm"] > 0 for row in rows)
    conflicts = result.summary["conflicts"]
    assert conflicts["steps"] == 3 and 0 <= conflicts["steps_conflicting"] <= 3
    assert conflicts["steps_conflicting"] == sum(row["conflict"] > 0 for row in rows)


def test_the_projected_step_equals_the_plain_one_when_nothing_conflicts(tiny_llama, qa_files, tmp_path):
    """With one side only (plain gradient ascent), projection has nothing to act on: same run."""
    from unlearn.run import run

    logs = []
    for flag in (False, True):
        raw = base_config(tiny_llama, qa_files, max_steps=2, project_conflicts=flag)
        raw["method"] = {"name": "ga"}
        run(load_config(raw=raw), tmp_path / str(flag))
        logs.append([json.loads(line) for line in (tmp_path / str(flag) / "train_log.jsonl").read_text().splitlines()])
    assert [r["loss"] for r in logs[0]] == [r["loss"] for r in logs[1]]


def test_project_conflicts_refuses_fp16():
    with pytest.raises(ConfigError, match="project_conflicts takes its gradients without fp16"):
        load_config(raw={"data": {"forget": {"path": "f"}, "normal": {"path": "n"}},
                         "train": {"project_conflicts": True, "mixed_precision": "fp16"}})
