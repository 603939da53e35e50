"""`source: original`: normal answers written by the original model before training."""
from __future__ import annotations

import json

import pytest

from conftest import base_config, write_jsonl
from unlearn.config import ConfigError, load_config
from unlearn.data.encoding import PairEncoder
from unlearn.evaluation.generation import answer_stop_ids, generate
from unlearn.io import read_jsonl
from unlearn.layout import RunFolder
from unlearn.models.loading import load_model
from unlearn.run import run


def _config(tiny_llama, qa_files, **extra):
    raw = base_config(tiny_llama, qa_files, max_steps=2)
    raw["data"]["normal"] = {"path": str(qa_files["prompts"]), "prompt": "Question", "source": "original",
                             "answer_tokens": 6}
    raw["method"] = {"name": "ga_kl"}
    raw["output"] = {"save": "none"}
    raw.update(extra)
    return raw


@pytest.fixture()
def prompt_file(qa_files, tmp_path):
    # prompts only: the answers come from the model, so the file needs no response field
    qa_files["prompts"] = write_jsonl(tmp_path / "prompts.jsonl", [
        {"Question": "What is the capital of France?"}, {"Question": "Who wrote Hamlet?"},
        {"Question": "What is the capital of France?"}, {"Question": "When does water boil?"}])
    return qa_files


def test_normal_answers_are_the_original_models_greedy_answers(tiny_llama, prompt_file, tmp_path):
    result = run(load_config(raw=_config(tiny_llama, prompt_file)), tmp_path / "out")
    written = read_jsonl(tmp_path / "out" / "original_answers" / "normal-0.jsonl")
    prompts = ["What is the capital of France?", "Who wrote Hamlet?", "When does water boil?"]  # duplicates once
    model, tokenizer = load_model(str(tiny_llama))
    encoder = PairEncoder(tokenizer, "auto", 64)
    expected = generate(model, tokenizer, [encoder.prompt_ids(p) for p in prompts], 6, 4,
                        stop_ids=answer_stop_ids(tokenizer, encoder))
    assert [r["prompt"] for r in written] == prompts[: len(written)]
    assert {r["prompt"]: r["response"] for r in written} == {p: a for p, a in zip(prompts, expected) if a.strip()}
    log = [json.loads(line) for line in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    assert log[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the KL's rows are read back from that file
    saved = load_config(tmp_path / "out" / "config.yaml")
    assert saved.data.normal[0].source == "original"  # the resolved config keeps what the user wrote
    assert result.summary["steps"] == 2


def test_resume_reuses_the_answers_and_overwrite_removes_them(tiny_llama, prompt_file, tmp_path):
    config = load_config(raw=_config(tiny_llama, prompt_file))
    run(config, tmp_path / "out")
    path = tmp_path / "out" / "original_answers" / "normal-0.jsonl"
    path.write_text(json.dumps({"prompt": "What is the capital of France?", "response": "kept on resume"}) + "\n")
    run(config.model_copy(update={"train": config.train.model_copy(update={"max_steps": 3})}), tmp_path / "out",
        resume=True)
    assert read_jsonl(path)[0]["response"] == "kept on resume"
    run(config, tmp_path / "out", overwrite=True)
    assert read_jsonl(path)[0]["response"] != "kept on resume"


def test_source_original_is_not_for_forget_data(tiny_llama, prompt_file):
    raw = _config(tiny_llama, prompt_file)
    raw["data"]["forget"]["source"] = "original"
    with pytest.raises(ConfigError, match="data: forget.source: original is only for data.normal"):
        load_config(raw=raw)
    raw["data"]["forget"]["source"] = "dataset"
    raw["data"]["normal"]["answer_tokens"] = 0
    with pytest.raises(ConfigError, match="data.normal.0.answer_tokens"):
        load_config(raw=raw)


def test_answers_are_cached_across_runs(tiny_llama, prompt_file, tmp_path, monkeypatch):
    monkeypatch.setenv("UNLEARN_EVAL_CACHE", "1")
    monkeypatch.setenv("UNLEARN_CACHE", str(tmp_path / "cache"))
    config = load_config(raw=_config(tiny_llama, prompt_file))
    run(config, tmp_path / "a")
    assert len(list((tmp_path / "cache" / "original").glob("*.jsonl"))) == 1
    monkeypatch.setattr("unlearn.evaluation.generation.generate", lambda *a, **k: pytest.fail("generated again"))
    run(config, tmp_path / "b")
    first, second = (read_jsonl(tmp_path / d / "original_answers" / "normal-0.jsonl") for d in "ab")
    assert first == second
    assert RunFolder(tmp_path / "a").original_answers.name == "original_answers"


def test_eval_command_answers_source_original_before_judging(tiny_llama, prompt_file, tmp_path):
    # the embedding judge learns from the normal answers: with source: original they must be generated
    # first (the file has no response field to read)
    import yaml

    from unlearn.evaluation.runner import evaluate_model

    raw = _config(tiny_llama, prompt_file)
    raw["eval"] = {"generation": {"max_new_tokens": 4, "batch_size": 4},
                   "tasks": [{"name": "harmful", "forget": {"path": str(prompt_file["forget"]), "prompt": "question",
                                                            "response": "answer"}}]}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    metrics = evaluate_model(path, str(tiny_llama), tmp_path / "eval")
    assert "harmful_rate@forget" in metrics["before"]
    written = read_jsonl(tmp_path / "eval" / "original_answers" / "normal-0.jsonl")
    assert [r["prompt"] for r in written] == ["What is the capital of France?", "Who wrote Hamlet?",
                                              "When does water boil?"][: len(written)]


def test_a_filtered_source_is_answered_on_its_kept_rows(tiny_llama, prompt_file, tmp_path):
    rows = [{"Question": "What is the capital of France?", "label": "safe"},
            {"Question": "How do I pick a lock?", "label": "unsafe"},
            {"Question": "Who wrote Hamlet?", "label": "safe"}]
    prompt_file["prompts"] = write_jsonl(tmp_path / "labelled.jsonl", rows)
    raw = _config(tiny_llama, prompt_file)
    raw["data"]["normal"]["where"] = {"label": "safe"}
    run(load_config(raw=raw), tmp_path / "out")
    answered = read_jsonl(tmp_path / "out" / "original_answers" / "normal-0.jsonl")
    assert [r["prompt"] for r in answered] == ["What is the capital of France?", "Who wrote Hamlet?"]
