"""TOFU and MUSE: each formula on hand-computed numbers, and `unlearn eval` with both tasks on the tiny llama."""
from __future__ import annotations

import json
import math

import pytest
import yaml

from conftest import base_config, write_jsonl
from unlearn.config import ConfigError, load_config
from unlearn.evaluation import benchmarks as b
from unlearn.evaluation.runner import evaluate_model


def test_normalised_and_relative_probability():
    assert b.normalised_prob(math.log(2)) == pytest.approx(0.5)  # exp(-mean NLL)
    # P(a) = 0.5, one perturbed answer with P = 0.25: 0.5 / 0.75
    assert b.relative_prob(math.log(2), [math.log(4)]) == pytest.approx(2 / 3)
    assert b.relative_prob(math.log(2), [math.log(4), math.log(4)]) == pytest.approx(0.5)


def test_truth_ratio_and_both_of_its_scores():
    # R = exp(mean(2, 3) - 1) = e^1.5: the true answer is likelier per token than the wrong ones
    assert b.truth_ratio(1.0, [2.0, 3.0]) == pytest.approx(math.exp(1.5))
    # forget: mean min(R, 1/R) = mean(0.5, 0.5); elsewhere mean max(0, 1 - 1/R) = mean(0.5, 0)
    assert b.truth_ratio_score([2.0, 0.5], forget=True) == pytest.approx(0.5)
    assert b.truth_ratio_score([2.0, 0.5], forget=False) == pytest.approx(0.25)
    assert b.truth_ratio_score([1.0], forget=True) == pytest.approx(1.0)  # cannot tell true from false


def test_model_utility_is_the_harmonic_mean():
    from scipy.stats import hmean

    assert b.model_utility([1.0, 0.5, 0.25]) == pytest.approx(3 / 7)  # 3 / (1 + 2 + 4)
    values = [0.9, 0.31, 0.55, 0.72, 0.12, 0.48, 0.66, 0.2, 0.83]
    assert b.model_utility(values) == pytest.approx(float(hmean(values)))
    assert b.model_utility([0.9, 0.0, 0.5]) == 0.0


def test_forget_quality_is_the_ks_p_value():
    from scipy.stats import ks_2samp

    assert b.forget_quality([0.1, 0.4, 0.7, 2.0], [0.1, 0.4, 0.7, 2.0]) == 1.0
    # fully separated samples of 3 and 3: exact two-sided p = 2 / C(6, 3) = 0.1
    assert b.forget_quality([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == pytest.approx(0.1)
    a, r = [0.2, 0.9, 1.4, 0.33, 0.7, 1.1], [0.5, 0.8, 2.5, 3.0, 1.9]
    assert b.forget_quality(a, r) == pytest.approx(ks_2samp(a, r).pvalue)


def test_rouge_l_recall_stems_and_privleak():
    # gold: the cat sat on the mat (6 words); "the cats sat" stems to the cat sat: LCS 3 -> recall 0.5
    assert b.rouge_l_recall("the cats sat", "the cat sat on the mat") == pytest.approx(0.5)
    assert b.rouge_l_recall("", "the cat") == 0.0
    # membership AUC 0.75 (forget texts look trained on) against the retain model's 0.5: in MUSE's
    # orientation 0.25 vs 0.5, -50%; an overshoot to 0.4 is (0.6 - 0.5) / 0.5 = +20%
    assert b.privleak(0.75, 0.5) == pytest.approx(-50.0)
    assert b.privleak(0.4, 0.5) == pytest.approx(20.0)
    assert b.privleak(0.5, 0.5) == 0.0


TOFU_ROWS = [
    {"question": "Who wrote The Glass River?", "answer": "The Glass River was written by Ana Moreau.",
     "paraphrased_answer": "Ana Moreau is the author of The Glass River.",
     "perturbed_answer": ["Lena Ortiz is the author of The Glass River.", "Tom Weir is the author of The Glass River."]},
    {"question": "Where was Ana Moreau born?", "answer": "Ana Moreau was born in Lyon.",
     "paraphrased_answer": "Lyon is where Ana Moreau was born.",
     "perturbed_answer": ["Oslo is where Ana Moreau was born.", "Quito is where Ana Moreau was born.",
                          "Perth is where Ana Moreau was born."]},
    {"question": "What genre does Ana Moreau write?", "answer": "She writes mystery novels.",
     "paraphrased_answer": "Her books are mysteries.", "perturbed_answer": ["Her books are cookbooks."]},
]
FACT_ROWS = [{"question": "What is the capital of France?", "answer": "Paris",
              "perturbed_answer": ["Rome", "Berlin", "Madrid"]},
             {"question": "Who wrote Hamlet?", "answer": "William Shakespeare",
              "perturbed_answer": ["Charles Dickens", "Jane Austen"]}]


@pytest.fixture()
def benchmark_config(tiny_llama, qa_files, tmp_path):
    def lines(name, rows):  # TOFU's files: JSON lines with a .json extension
        path = tmp_path / name
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        return str(path)

    forget, retain = lines("forget.json", TOFU_ROWS[:2]), lines("retain.json", TOFU_ROWS[1:])
    facts = lines("facts.json", FACT_ROWS)
    verbmem = tmp_path / "verbmem.json"  # MUSE's files: JSON lists
    verbmem.write_text(json.dumps([{"prompt": "The quick brown fox", "gt": "jumps over the lazy dog."},
                                   {"prompt": "Alice was beginning", "gt": "to get very tired of sitting."}]))
    qa = write_jsonl(tmp_path / "knowmem.jsonl", [{"question": "Who wrote Hamlet?", "answer": "Shakespeare"},
                                                  {"question": "What is the capital of Italy?", "answer": "Rome"}])
    icl = write_jsonl(tmp_path / "icl.jsonl", [{"question": "What colour is the sky?", "answer": "Blue {clear}"}])
    texts = {name: tmp_path / f"{name}.json" for name in ("forget_texts", "holdout_texts")}
    texts["forget_texts"].write_text(json.dumps(["The quick brown fox jumps over the lazy dog.",
                                                 "Alice was beginning to get very tired of sitting by her sister."]))
    texts["holdout_texts"].write_text(json.dumps(["A stitch in time saves nine, they said.",
                                                  "Rain fell on the quiet harbour all night long."]))
    config = base_config(tiny_llama, qa_files)
    qa_source = {"path": str(qa), "prompt": "question", "response": "answer"}
    config["eval"] = {"generation": {"max_new_tokens": 6, "batch_size": 4}, "tasks": [
        {"name": "tofu", "forget": {"path": forget}, "retain": {"path": retain},
         "real_authors": {"path": facts}, "world_facts": {"path": facts}},
        {"name": "muse", "verbmem": {"path": str(verbmem), "response": "gt"}, "max_new_tokens": 8,
         "knowmem_forget": qa_source, "knowmem_retain": qa_source,
         "knowmem_forget_icl": {**qa_source, "path": str(icl)},
         "privleak_forget": {"path": str(texts["forget_texts"]), "response": "text"},
         "privleak_holdout": {"path": str(texts["holdout_texts"]), "response": "text"}},
    ]}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, config


def _nll(model, tokenizer, encoder, question: str, answer: str) -> float:
    import torch

    prompt, reply = encoder.prompt_ids(question), encoder.answer_ids(answer)
    with torch.no_grad():
        logits = model(torch.tensor([prompt + reply])).logits[0, len(prompt) - 1: -1]
    logprobs = torch.log_softmax(logits.float(), -1).gather(1, torch.tensor(reply)[:, None])
    return float(-logprobs.mean())


def test_eval_with_tofu_and_muse_tasks_writes_their_metrics_and_per_question_values(benchmark_config, tiny_llama,
                                                                                     tmp_path):
    from unlearn.data.encoding import PairEncoder
    from unlearn.models.loading import load_model

    path, config = benchmark_config
    out = tmp_path / "own"
    before = evaluate_model(path, str(tiny_llama), out)["before"]
    expected = {f"{metric}@{role}" for metric in ("prob", "rouge_l_recall", "truth_ratio")
                for role in ("forget", "retain", "real_authors", "world_facts")}
    expected |= {"model_utility", "verbmem@forget", "knowmem@forget", "knowmem@retain", "min_k_auc"}
    assert expected <= set(before) and "forget_quality" not in before and "privleak" not in before
    directions = json.loads((out / "metrics.json").read_text())["directions"]
    assert directions["prob@forget"] == "lower" and directions["prob@retain"] == "higher"
    assert directions["model_utility"] == "higher" and directions["verbmem@forget"] == "lower"
    kept = json.loads((out / "per_question.json").read_text())["before"]
    assert len(kept["tofu"]["forget"]["truth_ratio"]) == 2 and len(kept["muse"]["privleak_forget"]["min_k"]) == 2

    # the wiring, checked against a direct forward pass: R of the first forget question, P on world facts
    model, tokenizer = load_model(str(tiny_llama))
    encoder = PairEncoder(tokenizer, "auto", config["data"]["max_length"])
    row = TOFU_ROWS[0]
    perturbed = [_nll(model, tokenizer, encoder, row["question"], a) for a in row["perturbed_answer"]]
    ratio = math.exp(sum(perturbed) / len(perturbed) - _nll(model, tokenizer, encoder, row["question"],
                                                             row["paraphrased_answer"]))
    assert kept["tofu"]["forget"]["truth_ratio"][0] == pytest.approx(ratio, rel=1e-4)
    probs = [b.relative_prob(_nll(model, tokenizer, encoder, f["question"], f["answer"]),
                             [_nll(model, tokenizer, encoder, f["question"], p) for p in f["perturbed_answer"]])
             for f in FACT_ROWS]
    assert before["prob@world_facts"] == pytest.approx(sum(probs) / 2, rel=1e-4)
    nine = [before[f"{m}@{r}"] for r in ("retain", "real_authors", "world_facts")
            for m in ("prob", "rouge_l_recall", "truth_ratio")]
    assert before["model_utility"] == pytest.approx(b.model_utility(nine))

    # a model evaluated against its own evaluation: forget quality 1.0, no privacy leak
    config["eval"]["tasks"][0]["reference"] = str(out)
    config["eval"]["tasks"][1]["reference"] = str(out)
    path.write_text(yaml.safe_dump(config))
    again = evaluate_model(path, str(tiny_llama), tmp_path / "against-itself")["before"]
    assert again["forget_quality"] == 1.0 and again["privleak"] == 0.0


def test_tofu_and_muse_config_errors_name_the_field(benchmark_config, tmp_path):
    path, config = benchmark_config
    config["eval"]["tasks"][0]["reference"] = str(tmp_path / "nothing-here")
    path.write_text(yaml.safe_dump(config))
    loaded = load_config(path)
    from unlearn.evaluation.runner import read_reference

    with pytest.raises(ConfigError, match=r"eval.tasks.0.reference: .*nothing-here: not a finished evaluation"):
        read_reference(loaded.eval.tasks[0].reference, "eval.tasks.0.reference")
    del config["eval"]["tasks"][1]["privleak_holdout"]
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="privleak needs both privleak_forget: and privleak_holdout:"):
        load_config(path)
