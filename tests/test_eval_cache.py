"""The original model's evaluation is cached across runs, and only reused when nothing changed."""
from __future__ import annotations

import json

import pytest

from conftest import base_config
from test_eval_runner import eval_files, eval_section  # noqa: F401 - the fixture is used by name
from unlearn.config import load_config
from unlearn.evaluation import cache, runner
from unlearn.evaluation.runner import Evaluator


@pytest.fixture()
def cached(monkeypatch, tmp_path):
    monkeypatch.setenv("UNLEARN_EVAL_CACHE", "1")
    monkeypatch.setenv("UNLEARN_CACHE", str(tmp_path / "cache"))
    calls = []
    real = runner.generate

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)
    monkeypatch.setattr(runner, "generate", counting)
    return calls


def _evaluate(tiny_llama, files, out, section=None):
    from unlearn.models.loading import load_model

    model, tokenizer = load_model(str(tiny_llama))
    config = load_config(raw={**base_config(tiny_llama, files), "eval": section or eval_section(files)})
    evaluator = Evaluator(config.eval, tokenizer, config.data, out)
    before = evaluator.evaluate_original(model, cache.model_fingerprint(str(tiny_llama), "float32"))
    after = evaluator.evaluate(model, stage="after", reference_model=model)
    return evaluator, before, after


def test_second_evaluation_of_the_same_original_is_read_back(cached, tiny_llama, eval_files, tmp_path):
    first, before, _ = _evaluate(tiny_llama, eval_files, tmp_path / "a")
    generated = len(cached)
    assert generated > 0 and len(list((tmp_path / "cache" / "eval").glob("*.json"))) == 1
    second, again, after = _evaluate(tiny_llama, eval_files, tmp_path / "b")
    assert again == before
    assert len(cached) - generated == generated / 2  # only the after stage generated
    assert second.originals == first.originals  # similarity is measured against the cached outputs
    assert after["similarity_to_original@normal"] == pytest.approx(1.0, abs=1e-5)
    rows = [json.loads(line) for line in (tmp_path / "b" / "generations.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in rows} == {"before", "after"}
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["before"] == before


def test_a_changed_data_file_or_setting_misses_the_cache(cached, tiny_llama, eval_files, tmp_path):
    _evaluate(tiny_llama, eval_files, tmp_path / "a")
    section = eval_section(eval_files)
    section["generation"]["max_new_tokens"] = 5
    _evaluate(tiny_llama, eval_files, tmp_path / "b", section)
    eval_files["holdout"].write_text(eval_files["holdout"].read_text() + '{"question": "Q?", "answer": "A."}\n')
    _evaluate(tiny_llama, eval_files, tmp_path / "c")
    assert len(list((tmp_path / "cache" / "eval").glob("*.json"))) == 3


def test_no_cache_for_hub_models_or_when_turned_off(monkeypatch):
    assert cache.model_fingerprint("some-org/some-model", "float32") is None
    assert cache.cache_key(None, {}, {}) is None
    monkeypatch.setenv("UNLEARN_EVAL_CACHE", "0")
    assert cache.cache_key(["folder", "/m", [], "float32"], {}, {}) is None


def test_data_set_folders_are_part_of_the_key():
    from unlearn.evaluation.cache import _paths

    settings = {"data": {"forget": {"dataset": "saved/forget_set"}, "normal": [{"path": "normal.csv"}]}}
    assert sorted(_paths(settings)) == ["normal.csv", "saved/forget_set"]  # a re-saved folder misses the cache


def test_the_same_bytes_under_another_name_hit_the_cache(tmp_path, monkeypatch):
    # every run writes the original's answers into its own folder (source: original); the original's
    # evaluation must not miss the cache because of where that copy lives
    monkeypatch.setenv("UNLEARN_EVAL_CACHE", "1")
    model = ["folder", "/m", [], "float32"]
    answers = {}
    for run in ("run-a", "run-b", "run-c"):
        (tmp_path / run).mkdir()
        answers[run] = tmp_path / run / "normal-0.jsonl"
        answers[run].write_text('{"prompt": "Q?", "response": "A."}\n')
    answers["run-c"].write_text('{"prompt": "Q?", "response": "B."}\n')
    key = {run: cache.cache_key(model, {"tasks": []}, {"normal": [{"path": str(path), "weight": 1.0}]})
           for run, path in answers.items()}
    assert key["run-a"] is not None and key["run-a"] == key["run-b"]
    assert key["run-c"] != key["run-a"]
    assert cache.cache_key(model, {"tasks": []}, {"normal": [{"path": "no/such/file.csv"}]}) != \
        cache.cache_key(model, {"tasks": []}, {"normal": [{"path": "no/such/other.csv"}]})


def test_training_only_data_settings_do_not_enter_the_key(monkeypatch):
    # a sweep over the normal sources' mixing weights or the mismatch pool evaluates the same original
    monkeypatch.setenv("UNLEARN_EVAL_CACHE", "1")
    model = ["folder", "/m", [], "float32"]
    base = {"forget": {"path": "f.csv", "weight": 1.0}, "max_length": 64,
            "normal": [{"path": "n.csv", "weight": 1.0}, {"path": "m.csv", "weight": 1.0}]}
    key = cache.cache_key(model, {"tasks": []}, base)
    reweighted = {**base, "normal": [{"path": "n.csv", "weight": 2.0}, {"path": "m.csv", "weight": 0.5}],
                  "mismatch_pool": [{"path": "pool.csv"}], "onpolicy": {"samples": 4}}
    assert cache.cache_key(model, {"tasks": []}, reweighted) == key
    fewer_rows = {**base, "normal": [{"path": "n.csv", "weight": 1.0, "limit": 5}, {"path": "m.csv", "weight": 1.0}]}
    assert cache.cache_key(model, {"tasks": []}, fewer_rows) != key  # the judge reads the normal rows
    assert cache.cache_key(model, {"tasks": []}, {**base, "max_length": 32}) != key
    assert cache.cache_key(model, {"tasks": []}, {**base, "normal": base["normal"][::-1]}) != key
