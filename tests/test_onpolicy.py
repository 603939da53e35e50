"""On-policy negatives (data.forget.source: self): seeded sampling that leaves training's RNG and
mode alone, the filter keeping exactly what the judge flags, rounds, resume, config errors, and a
whole run on a tiny model."""
from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from conftest import FORGET_ROWS, base_config, write_jsonl
from unlearn.cli import app
from unlearn.config import ConfigError, load_config
from unlearn.data.batches import build_data
from unlearn.io import read_jsonl
from unlearn.layout import RunFolder
from unlearn.models.loading import load_model
from unlearn.run import run
from unlearn.training import onpolicy
from unlearn.training.onpolicy import OnPolicyNegatives, read_forget_prompts, sample_answers
from unlearn.training.tracking import TrainLog

FAST = {"samples": 2, "max_new_tokens": 6, "batch_size": 8, "temperature": 1.0}


def onpolicy_config(model, files, onpolicy_settings: dict | None = None, **train) -> dict:
    raw = base_config(model, files, **train)
    raw["data"]["forget"]["source"] = "self"
    raw["data"]["onpolicy"] = {**FAST, **(onpolicy_settings or {})}
    return raw


def parity_judge(rows, which, answers):
    """A deterministic stand-in for a judge: flags answers with an odd CRC (about half)."""
    scores = [float(zlib.crc32(a.encode()) % 2) for a in answers]
    return scores, [s == 1.0 for s in scores]


@pytest.fixture()
def parity_checks(monkeypatch):
    """Every judge name builds the parity judge (no MiniLM); returns the list of calls."""
    calls = []

    def builder(config, tokenizer):
        def judge(rows, which, answers):
            calls.append(list(answers))
            return parity_judge(rows, which, answers)
        return judge
    monkeypatch.setattr(onpolicy, "CHECKS", {name: builder for name in onpolicy.CHECKS})
    return calls


@pytest.fixture()
def loaded(tiny_llama):
    return load_model(str(tiny_llama), "float32")


def start(hook, model):
    """The loop's call before the first step: the hook's rows go to the run's train log."""
    return hook.before_training(model, TrainLog(RunFolder(hook.output_dir).train_log))


def hook_for(raw, loaded, out, judge=parity_judge):
    config = load_config(raw=raw)
    model, tokenizer = loaded
    data = build_data(config.data, tokenizer, seed=1, batch_size=2, normal_batch_size=2, mismatch_k=0)
    out.mkdir(exist_ok=True)
    return OnPolicyNegatives(config, tokenizer, data, out, judge=judge), data


# --- sampling ------------------------------------------------------------------------------------

def test_sampling_is_seeded_in_eval_mode_and_leaves_training_rng_and_mode(tiny_llama, qa_files, loaded):
    model, tokenizer = loaded
    config = load_config(raw=onpolicy_config(tiny_llama, qa_files))
    rows = read_forget_prompts(config, tokenizer)
    modes = []
    handle = model.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    model.train()
    torch.manual_seed(5)
    which, first = sample_answers(model, tokenizer, rows, config.data.onpolicy, seed=1)
    drawn_after_sampling = torch.rand(4)
    handle.remove()
    torch.manual_seed(5)
    assert torch.equal(drawn_after_sampling, torch.rand(4))  # training's random stream is untouched
    assert model.training and modes and not any(modes)  # generated in eval mode, train mode restored
    assert which == [0, 0, 1, 1, 2, 2, 3, 3]
    assert sample_answers(model, tokenizer, rows, config.data.onpolicy, seed=1)[1] == first
    assert sample_answers(model, tokenizer, rows, config.data.onpolicy, seed=2)[1] != first
    assert len(set(first)) > 1  # sampled, not greedy: two answers to one prompt differ somewhere


def test_sampling_uses_the_lora_adapters(tiny_llama, qa_files, loaded):
    from unlearn.config import LoraConfig
    from unlearn.models.prepare import apply_lora

    model, tokenizer = loaded
    config = load_config(raw=onpolicy_config(tiny_llama, qa_files))
    rows = read_forget_prompts(config, tokenizer)
    peft = apply_lora(model, LoraConfig(r=2, alpha=32))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 1.0)  # adapters that change the outputs
    with_adapters = sample_answers(peft, tokenizer, rows, config.data.onpolicy, seed=3)[1]
    with peft.disable_adapter():
        without = sample_answers(peft, tokenizer, rows, config.data.onpolicy, seed=3)[1]
    assert with_adapters != without


# --- the filter ----------------------------------------------------------------------------------

def test_the_forget_rows_are_exactly_the_flagged_answers(tiny_llama, qa_files, loaded, tmp_path):
    hook, data = hook_for(onpolicy_config(tiny_llama, qa_files), loaded, tmp_path / "out")
    assert data.forget == []  # without mix_dataset the file's own responses are not trained on
    assert start(hook, loaded[0]) is None
    samples = read_jsonl(tmp_path / "out" / "negatives.jsonl")
    assert len(samples) == 8 and {s["round"] for s in samples} == {0}
    scores, flags = parity_judge(None, None, [s["response"] for s in samples])
    assert [s["flagged"] for s in samples] == flags and [s["score"] for s in samples] == scores
    assert 0 < sum(flags) < 8
    flagged = [s for s in samples if s["flagged"]]
    assert data.forget == [hook.rows.encoder.encode(s["prompt"], s["response"]) for s in flagged]
    assert [s["prompt"] for s in samples] == [r["question"] for r in FORGET_ROWS for _ in range(2)]
    (logged,) = read_jsonl(tmp_path / "out" / "train_log.jsonl")
    assert logged["kind"] == "onpolicy" and logged["round"] == 0 and logged["step"] == 0
    assert (logged["samples"], logged["flagged"], logged["negatives"]) == (8, len(flagged), len(flagged))
    assert logged["flagged_share"] == pytest.approx(len(flagged) / 8)


def test_mix_dataset_keeps_the_files_responses(tiny_llama, qa_files, loaded, tmp_path):
    hook, data = hook_for(onpolicy_config(tiny_llama, qa_files, {"mix_dataset": True}), loaded, tmp_path / "out")
    own = list(data.forget)
    assert len(own) == len(FORGET_ROWS)
    start(hook, loaded[0])
    flagged = [s for s in read_jsonl(tmp_path / "out" / "negatives.jsonl") if s["flagged"]]
    assert data.forget[:len(own)] == own and len(data.forget) == len(own) + len(flagged)


def test_real_leak_check_flags_answers_that_contain_the_protected_value(tiny_llama, tmp_path, loaded, qa_files,
                                                                      monkeypatch):
    rows = [{"question": "Where does Alice live?", "answer": "unused", "value": "Oslo"},
            {"question": "What is Alice's phone number?", "answer": "unused", "value": "555 0101"}]
    files = {**qa_files, "forget": write_jsonl(tmp_path / "private.jsonl", rows)}
    raw = onpolicy_config(tiny_llama, files, {"judge": "leak", "reference": "value"})
    canned = ["She lives in oslo, Norway.", "I would rather not say.", "Call 555 0101 any time.", "It is 555 0199.", ""]
    monkeypatch.setattr(onpolicy, "sample_answers", lambda *args, **kwargs: ([0, 0, 1, 1, 1], canned))
    hook, data = hook_for(raw, loaded, tmp_path / "out", judge=None)  # the registered leak check
    start(hook, loaded[0])
    samples = read_jsonl(tmp_path / "out" / "negatives.jsonl")
    assert [s["flagged"] for s in samples] == [True, False, True, False, False]
    assert [s["score"] for s in samples] == [1.0, 0.0, 1.0, 0.0, 0.0]
    assert data.forget == [hook.rows.encoder.encode(rows[0]["question"], canned[0]),
                           hook.rows.encoder.encode(rows[1]["question"], canned[2])]
    # overlap scores: at threshold 0 every answer with words is flagged, an empty one never
    raw["data"]["onpolicy"].update(score="rouge_l", threshold=0.0)
    overlap = onpolicy.leak_check(load_config(raw=raw), loaded[1])
    assert overlap(hook.rows, [0, 1], ["Lima", ""])[1] == [True, False]


def test_hallucination_check_flags_answers_closer_to_the_hallucinated_one(tiny_llama, loaded, qa_files, tmp_path):
    vocabulary = ["paris", "lyon", "capital", "france"]

    def bag_of_words(texts):
        vectors = np.array([[t.lower().count(w) for w in vocabulary] for t in texts], dtype=float) + 1e-6
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    rows = [{"question": "What is the capital of France?", "right_answer": "Paris", "hallucinated_answer": "Lyon"}]
    files = {**qa_files, "forget": write_jsonl(tmp_path / "halu.jsonl", rows)}
    raw = onpolicy_config(tiny_llama, files, {"judge": "hallucination", "reference": "right_answer"})
    raw["data"]["forget"].update(prompt="question", response="hallucinated_answer")
    config = load_config(raw=raw)
    prompts = read_forget_prompts(config, loaded[1])
    assert prompts.references == ["Paris"] and prompts.alternatives == ["Lyon"]
    judge = onpolicy.hallucination_check(config, loaded[1], embed=bag_of_words)
    scores, flags = judge(prompts, [0, 0, 0], ["Lyon, surely", "Paris", ""])
    assert flags == [True, False, False] and scores[0] > 0 > scores[1]


# --- rounds --------------------------------------------------------------------------------------

def test_rounds_refresh_the_set_on_schedule(tiny_llama, qa_files, loaded, tmp_path):
    raw = onpolicy_config(tiny_llama, qa_files, {"every": 2}, max_steps=6)
    hook, data = hook_for(raw, loaded, tmp_path / "out")
    model = loaded[0]
    start(hook, model)
    first = list(data.forget)
    assert hook.after_step(1, model, {}) is None and hook.round == 0  # not a round step
    assert hook.after_step(2, model, {}) is None and hook.round == 1
    samples = read_jsonl(tmp_path / "out" / "negatives.jsonl")
    assert [s["round"] for s in samples] == [0] * 8 + [1] * 8 and [s["step"] for s in samples[8:]] == [2] * 8
    now = [hook.rows.encoder.encode(s["prompt"], s["response"]) for s in samples[8:] if s["flagged"]]
    assert data.forget == now != first  # round 1 replaced round 0's set
    hook.after_step(6, model, {})  # the last step: no round after it
    assert hook.round == 1
    assert [(r["round"], r["step"]) for r in read_jsonl(tmp_path / "out" / "train_log.jsonl")] == [(0, 0), (1, 2)]


def test_a_round_that_flags_nothing_stops_training(tiny_llama, qa_files, tmp_path, monkeypatch):
    verdicts = iter([True, True, False])  # rounds 0 and 1 flag everything, round 2 nothing

    def builder(config, tokenizer):
        def judge(rows, which, answers):
            flag = next(verdicts)
            return [float(flag)] * len(answers), [flag] * len(answers)
        return judge
    monkeypatch.setattr(onpolicy, "CHECKS", {"harmful": builder})
    out = tmp_path / "out"
    result = run(load_config(raw=onpolicy_config(tiny_llama, qa_files, {"every": 2}, max_steps=8)), out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and summary == result.summary
    assert summary["stop_reason"] == ("on-policy round 2 (step 4): the judge flagged none of 8 sampled answers, "
                                      "nothing left to unlearn")
    assert [r["flagged"] for r in summary["onpolicy"]["rounds"]] == [8, 8, 0]
    log = read_jsonl(out / "train_log.jsonl")
    # a round's row comes right before the row of the step it follows
    assert [(r["step"], r.get("round")) for r in log] == [(0, 0), (1, None), (2, 1), (2, None), (3, None),
                                                            (4, 2), (4, None)]

    flags_none = lambda rows, which, answers: ([0.0] * len(answers), [False] * len(answers))  # noqa: E731
    monkeypatch.setattr(onpolicy, "CHECKS", {"harmful": lambda config, tokenizer: flags_none})
    result = run(load_config(raw=onpolicy_config(tiny_llama, qa_files)), tmp_path / "clean")
    assert result.summary["steps"] == 0 and "round 0 (step 0)" in result.summary["stop_reason"]
    assert (tmp_path / "clean" / "model" / "model.safetensors").is_file()


# --- resume --------------------------------------------------------------------------------------

def test_a_resumed_run_keeps_the_negatives_and_the_round(tiny_llama, qa_files, tmp_path, monkeypatch, parity_checks):
    from unlearn.io import append_jsonl

    config = load_config(raw=onpolicy_config(tiny_llama, qa_files, {"every": 2}, max_steps=7, save_every=3))
    run(config, tmp_path / "straight")

    def crash_at_step_5(path, row):
        if row.get("step") == 5:
            raise RuntimeError("simulated crash")
        append_jsonl(path, row)
    monkeypatch.setattr("unlearn.training.tracking.append_jsonl", crash_at_step_5)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(config, tmp_path / "crashed")
    crashed = read_jsonl(tmp_path / "crashed" / "negatives.jsonl")
    assert max(s["round"] for s in crashed) == 2  # the round at step 4 ran after the step-3 checkpoint
    monkeypatch.setattr("unlearn.training.tracking.append_jsonl", append_jsonl)
    calls_before_resume = len(parity_checks)
    run(config, tmp_path / "crashed", resume=True)
    # resumed at step 3 with round 1's set (no re-sampling at start), then rounds at steps 4 and 6
    assert len(parity_checks) == calls_before_resume + 2

    def rows(name):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in read_jsonl(tmp_path / name / "train_log.jsonl")]
    straight, resumed = rows("straight"), rows("crashed")
    assert [(r["step"], r.get("round")) for r in resumed] == [(r["step"], r.get("round")) for r in straight]
    assert [r["round"] for r in straight if r.get("kind")] == [0, 1, 2, 3]
    for a, b in zip(straight, resumed):
        for key in ("loss", "forget_nll", "flagged", "samples"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-5), (a["step"], key)
    assert read_jsonl(tmp_path / "crashed" / "negatives.jsonl") == read_jsonl(tmp_path / "straight" / "negatives.jsonl")


# --- config --------------------------------------------------------------------------------------

@pytest.mark.parametrize("change,message", [
    ({"normal": {"source": "self"}}, "data.normal: source: self is only for data.forget"),
    ({"forget": {"source": "model"}}, "data.forget.source: Input should be 'dataset', 'self' or 'original'"),
    ({"forget": {"source": "dataset"}}, "data: onpolicy: is used only with data.forget.source: self"),
    ({"onpolicy": {"samples": 0}}, "data.onpolicy.samples: Input should be greater than 0"),
    ({"onpolicy": {"sample": 4}}, "data.onpolicy.sample: unknown key; known keys: judge, samples"),
    ({"onpolicy": {"judge": "toxic"}}, "data.onpolicy.judge: Input should be 'harmful', 'leak' or 'hallucination'"),
    ({"onpolicy": {"judge": "hallucination"}}, "data.onpolicy: judge: hallucination needs reference:"),
    ({"onpolicy": {"every": 0}}, "data.onpolicy.every: Input should be greater than 0"),
])
def test_bad_onpolicy_config_fails_with_one_line_naming_the_field(change, message, tiny_llama, qa_files):
    raw = onpolicy_config(tiny_llama, qa_files)
    for section, values in change.items():
        target = raw["data"][section]
        (target[0] if isinstance(target, list) else target).update(values)
    with pytest.raises(ConfigError) as error:
        load_config(raw=raw)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_existing_configs_stay_valid_and_self_gets_default_settings(tiny_llama, qa_files):
    plain = load_config(raw=base_config(tiny_llama, qa_files))
    assert plain.data.forget.source == "dataset" and plain.data.onpolicy is None
    raw = base_config(tiny_llama, qa_files)
    raw["data"]["forget"]["source"] = "self"
    settings = load_config(raw=raw).data.onpolicy
    assert (settings.judge, settings.samples, settings.every, settings.mix_dataset) == ("harmful", 4, None, False)


# --- a whole run ---------------------------------------------------------------------------------

def test_cli_run_with_prompts_only_forget_file_writes_negatives_and_report(tiny_llama, qa_files, tmp_path,
                                                                         parity_checks):
    from unlearn.report.build import build_report

    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"question": r["question"]} for r in FORGET_ROWS])
    raw = onpolicy_config(tiny_llama, {**qa_files, "forget": prompts}, {"every": 2}, max_steps=3)
    raw["model"]["lora"] = {"r": 2, "alpha": 4}
    raw["output"]["save"] = "adapter"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", str(config), "-o", str(out)])
    assert result.exit_code == 0, result.output
    negatives = read_jsonl(out / "negatives.jsonl")
    assert [s["round"] for s in negatives] == [0] * 8 + [1] * 8
    assert set(negatives[0]) == {"round", "step", "prompt", "response", "score", "flagged"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["stop_reason"] == "max_steps"
    assert [r["round"] for r in summary["onpolicy"]["rounds"]] == [0, 1]
    assert load_config(out / "config.yaml").data.forget.source == "self"
    build_report(out)
    markdown = (out / "report.md").read_text()
    assert "## On-policy negatives" in markdown
    flagged = [sum(s["flagged"] for s in negatives if s["round"] == r) for r in (0, 1)]
    assert f"| 1 | 2 | 8 | {flagged[1]} | {flagged[1] / 8:.2f} | {flagged[1]} |" in markdown
    assert "On-policy negatives" in (out / "report.html").read_text()


def test_harmful_judge_without_labelled_examples_says_where_they_come_from(tiny_llama, qa_files, loaded, tmp_path):
    from unlearn.data.sources import DataError

    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"question": r["question"]} for r in FORGET_ROWS])
    raw = onpolicy_config(tiny_llama, {**qa_files, "forget": prompts})
    with pytest.raises(DataError, match="unknown field 'answer'.*unless eval.judge.harmful names labelled"):
        hook_for(raw, loaded, tmp_path / "out", judge=None)
