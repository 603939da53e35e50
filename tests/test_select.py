"""Validation-driven selection and early stopping (training/select.py), on scripted validation logs."""
from __future__ import annotations

import json

import pytest

from conftest import base_config
from unlearn.config import load_config
from unlearn.layout import RunFolder
from unlearn.training.select import Rule, Selector
from unlearn.training.tracking import TrainLog


def test_rule_reads_metric_names_with_roles_and_baseline():
    rule = Rule("leak_rate@forget <= 0.05 and recall@retain >= before.recall@retain - 0.1")
    assert rule({"leak_rate@forget": 0.0, "recall@retain": 0.85, "before.recall@retain": 0.95})
    assert not rule({"leak_rate@forget": 0.0, "recall@retain": 0.84, "before.recall@retain": 0.95})
    assert Rule("-a + 2 * b")({"a": 1.0, "b": 0.5}) == pytest.approx(0.0)
    with pytest.raises(KeyError, match="produces: a"):
        Rule("missing > 1")({"a": 1.0})
    with pytest.raises(ValueError, match="not allowed"):
        Rule("__import__('os')")


class Scripted:
    """A validation function that replays a hand-written log, and a stand-in model."""

    def __init__(self, log):
        self.log, self.calls = log, []

    def __call__(self, model, step):
        self.calls.append(step)
        return self.log[step]


class FakeModel:
    training = True

    def __init__(self):
        import torch

        self.weight = torch.nn.Parameter(torch.zeros(2))

    def named_parameters(self):
        return [("weight", self.weight)]

    def eval(self):
        self.training = False

    def train(self, mode=True):
        self.training = mode


# step -> validation metrics; hand-checked: the eligible steps (recall >= 0.8) are 0, 5, 10, 20;
# the best score (-leak) among them is at step 10 (leak 0.1); step 15 has lower leak but recall 0.5.
LOG = {0: {"leak": 0.9, "recall": 0.95}, 5: {"leak": 0.4, "recall": 0.9}, 10: {"leak": 0.1, "recall": 0.85},
       15: {"leak": 0.0, "recall": 0.5}, 20: {"leak": 0.2, "recall": 0.8}}


def drive(selector, model, steps):
    import torch

    selector.before_training(model, TrainLog(RunFolder(selector.output_dir).train_log))
    for step in range(1, steps + 1):
        with torch.no_grad():
            model.weight.fill_(step)  # the weights remember the step they belong to
        reason = selector.after_step(step, model, {})
        if reason:
            return step, reason
    return steps, None


def test_selection_picks_the_hand_checked_step_and_loads_its_weights(tmp_path):
    model = FakeModel()
    selector = Selector({"every": 5, "score": "-leak", "constraint": "recall >= 0.8"}, Scripted(LOG), tmp_path)
    assert drive(selector, model, 20) == (20, None)
    selector.finish(model)
    assert selector.summary()["selection"]["best_step"] == 10
    assert model.weight.tolist() == [10.0, 10.0]
    rows = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 5, 10, 15, 20] and all(r["validation"] for r in rows)
    assert [r["eligible"] for r in rows] == [True, True, True, False, True]


def test_baseline_relative_constraint(tmp_path):
    selector = Selector({"every": 5, "score": "-leak", "constraint": "recall >= before.recall - 0.1"},
                        Scripted(LOG), tmp_path)
    drive(selector, FakeModel(), 20)
    assert selector.summary()["selection"]["best_step"] == 10  # 0.85 >= 0.95 - 0.1


def test_stop_rule_and_patience_fire(tmp_path):
    selector = Selector({"every": 5, "score": "-leak", "stop_when": "leak <= 0.1 and recall >= 0.8"},
                        Scripted(LOG), tmp_path / "a")
    step, reason = drive(selector, FakeModel(), 20)
    assert step == 10 and "stop_when" in reason
    patient = Selector({"every": 5, "score": "-leak", "constraint": "recall >= 0.8", "patience": 1},
                       Scripted(LOG), tmp_path / "b")
    step, reason = drive(patient, FakeModel(), 20)
    assert step == 15 and "patience" in reason  # step 15 is not eligible: no improvement


def test_stop_rule_needs_an_eligible_checkpoint(tmp_path):
    # step 15 leaks nothing but fails the recall floor: training goes on to step 20
    selector = Selector({"every": 5, "score": "-leak", "constraint": "recall >= 0.8", "stop_when": "leak <= 0.0"},
                        Scripted(LOG), tmp_path)
    step, reason = drive(selector, FakeModel(), 20)
    assert (step, reason) == (20, None)
    assert selector.summary()["selection"]["best_step"] == 10


def test_no_eligible_checkpoint_is_reported(tmp_path):
    selector = Selector({"every": 5, "score": "-leak", "constraint": "recall >= 0.99"}, Scripted(LOG), tmp_path)
    drive(selector, FakeModel(), 20)
    selection = selector.summary()["selection"]
    assert selection["best_step"] == 15 and not selection["eligible"] and "no validation met" in selection["reason"]


def test_state_round_trip_keeps_selection(tmp_path):
    first = Selector({"every": 5, "score": "-leak", "constraint": "recall >= 0.8"}, Scripted(LOG), tmp_path)
    model = FakeModel()
    drive(first, model, 10)
    state = json.loads(json.dumps(first.state_dict()))
    second = Selector({"every": 5, "score": "-leak", "constraint": "recall >= 0.8"}, Scripted(LOG), tmp_path)
    second.load_state_dict(state)
    second.before_training(model, TrainLog(RunFolder(tmp_path).train_log))  # as the loop does after loading it
    import torch

    for step in range(11, 21):
        with torch.no_grad():
            model.weight.fill_(step)
        second.after_step(step, model, {})
    second.finish(model)
    assert second.summary()["selection"]["best_step"] == 10 and model.weight.tolist() == [10.0, 10.0]


def test_run_with_select_outputs_the_selected_checkpoint(tiny_llama, qa_files, tmp_path):
    """End to end on a tiny model: validation rows in the log, the selection in summary.json."""
    from unlearn.run import run

    raw = base_config(tiny_llama, qa_files, max_steps=6, save_every=1)  # checkpoints must keep the best
    raw["model"]["lora"] = {"r": 4, "alpha": 8}
    raw["eval"] = {"generation": {"max_new_tokens": 4, "batch_size": 4},
                   "tasks": [{"name": "contains", "forget": {"path": str(qa_files["forget"]), "prompt": "question",
                                                             "response": "answer"}},
                             {"name": "utility"}]}
    raw["select"] = {"every": 2, "score": "-leak_rate@forget", "constraint": "True"}
    result = run(load_config(raw=raw), tmp_path / "out")
    rows = [json.loads(line) for line in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r.get("validation")] == [0, 2, 4, 6]
    selection = result.summary["selection"]
    assert selection["best_step"] in (0, 2, 4, 6) and selection["validations"] == 4
    assert list((tmp_path / "out" / "checkpoints").glob("best-step-*")), "the selected weights were deleted"
    # the output is the selected checkpoint: the final eval (same prompts and tokens, greedy) agrees
    # with that step's validation
    after = json.loads((tmp_path / "out" / "metrics.json").read_text())["after"]
    assert after["leak_rate@forget"] == selection["metrics"]["leak_rate@forget"]
    assert after["perplexity@normal"] == pytest.approx(selection["metrics"]["perplexity@normal"], rel=1e-4)
    assert (tmp_path / "out" / "validation" / "metrics.json").exists()
