"""Each evaluation metric against a value computed by hand."""
from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch

from unlearn.evaluation import metrics as m
from unlearn.config.eval import JudgeConfig
from unlearn.evaluation.generation import TokenScores, generate, score_answers
from unlearn.evaluation.judges import ClassifierJudge, EmbeddingJudge, Examples, RewardJudge
from unlearn.evaluation.privacy import MIA_SCORES, auc


def test_bleu_on_known_strings():
    # precisions 5/6, 3/5, 2/4, 1/3 over 1..4-grams; equal lengths, so no brevity penalty
    expected = (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert m.bleu("the cat sat on the mat", "the cat sat on a mat") == pytest.approx(expected, abs=1e-6)
    assert m.bleu("Identical text here.", "identical  text here.") == 1.0
    assert m.bleu("", "something") == 0.0


def test_rouge_l_on_known_strings():
    # longest common subsequence "the cat sat on mat": 5 of 6 words on both sides
    assert m.rouge_l("the cat sat on the mat", "the cat sat on a mat") == pytest.approx(5 / 6)
    assert m.rouge_l("alpha beta", "gamma delta") == 0.0
    assert m.METRICS["rouge_l"] is m.rouge_l and m.METRICS["bleu"] is m.bleu


def test_contains_ignores_case_whitespace_and_punctuation():
    assert m.contains("She lives in  OSLO, Norway.", "Oslo.") == 1.0
    assert m.contains("Her number is 555   0101", "555 0101") == 1.0
    assert m.contains("Her number is 555 0102", "555 0101") == 0.0
    assert m.contains("anything", "  ") == 0.0


def test_refusal_phrases():
    assert m.is_refusal("I’m sorry, but I can't help with that.")
    assert m.is_refusal("As an AI, I must decline.")
    assert not m.is_refusal("Paris is the capital of France.")
    assert m.is_refusal("Nope.", phrases=["nope"])


def test_diversity_is_mean_unique_word_share():
    # "the the the cat": 2 distinct of 4 words; "a b": 2 of 2; "" counts 0
    assert m.unique_share("the the the cat") == 0.5
    assert m.diversity(["the the the cat", "a b"]) == pytest.approx(0.75)
    assert m.diversity(["the the the cat", "a b", ""]) == pytest.approx(0.5)


def test_perplexity_is_token_weighted():
    assert m.perplexity([2.0, 4.0], [1, 3]) == pytest.approx(math.exp(6 / 4))
    assert math.isnan(m.perplexity([], []))


def test_nonsense_rules():
    rules = dict(min_unique_share=0.3, min_words=8, max_perplexity=100.0)
    assert m.nonsense("   ", None, **rules)
    assert m.nonsense("no " * 10, 5.0, **rules)  # 1 distinct word of 10
    assert not m.nonsense("no no no", 5.0, **rules)  # too short to call repetitive
    assert m.nonsense("a perfectly ordinary sentence", 500.0, **rules)
    assert not m.nonsense("a perfectly ordinary sentence", 20.0, **rules)


def _stub_embedder(table: dict[str, list[float]]):
    def embed(texts):
        rows = np.array([table[t] for t in texts], dtype=np.float64)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return embed


def test_hallucination_nearest_answer_with_stub_embedder():
    embed = _stub_embedder({"Paris": [1, 0], "Lyon": [0, 1], "Paris, I think": [0.9, 0.1],
                            "Lyon maybe": [0.2, 0.8], "": [1, 1]})
    flags = m.hallucinated(["Paris, I think", "Lyon maybe", ""], ["Paris"] * 3, ["Lyon"] * 3, embed)
    assert flags == [False, True, False]
    assert m.cosine_to(["Paris, I think"], ["Paris"], embed)[0] == pytest.approx(0.9 / math.hypot(0.9, 0.1))


def test_auc_on_known_scores():
    # member scores 3 and 4 against 1, 2, 3.5: 5 of 6 pairs ordered correctly
    assert auc([3, 4], [1, 2, 3.5]) == pytest.approx(5 / 6)
    assert auc([1, 1], [1, 1]) == 0.5
    assert auc([0], [1]) == 0.0


def test_membership_scores_by_hand():
    scores = TokenScores(np.array([-1.0, -2.0, -3.0, -4.0]), mean=np.array([-1.0] * 4),
                         std=np.array([1.0, 1.0, 2.0, 2.0]))
    assert MIA_SCORES["loss"](scores, "abc", 0.5) == pytest.approx(-2.5)
    assert MIA_SCORES["zlib"](scores, "abc", 0.5) == pytest.approx(-2.5 / len(zlib.compress(b"abc")))
    assert MIA_SCORES["min_k"](scores, "abc", 0.5) == pytest.approx(-3.5)  # the two lowest: -4, -3
    # standardised: 0, -1, -1, -1.5; the two lowest average to -1.25
    assert MIA_SCORES["min_k_pp"](scores, "abc", 0.5) == pytest.approx(-1.25)
    assert MIA_SCORES["min_k"](scores, "abc", 0.01) == pytest.approx(-4.0)  # at least one token


def _examples(harmful: list[str], safe: list[str]) -> Examples:
    return Examples(["q"] * (len(harmful) + len(safe)), harmful + safe, [1] * len(harmful) + [0] * len(safe))


def test_embedding_judge_on_separable_toy_set():
    harmful = [f"bomb recipe {i}" for i in range(6)]
    safe = [f"nice weather {i}" for i in range(6)]
    table = {t: [1.0, 0.1 * i] for i, t in enumerate(harmful)} | {t: [0.1 * i, 1.0] for i, t in enumerate(safe)}
    table |= {"bomb recipe new": [1.0, 0.05], "nice weather new": [0.05, 1.0]}
    judge = EmbeddingJudge(JudgeConfig(), _examples(harmful, safe), embedder=_stub_embedder(table))
    assert judge.accuracy == 1.0
    assert judge.harmful(["q"] * 3, ["bomb recipe new", "nice weather new", "  "]) == [True, False, False]


def test_judge_heldout_accuracy_on_labelled_file(tmp_path):
    """test_harmful / test_safe: one labelled file split with where:; accuracy = agreeing share."""
    import json

    from unlearn.evaluation.judges import accuracy_on, heldout_examples

    harmful = [f"bomb recipe {i}" for i in range(6)]
    safe = [f"nice weather {i}" for i in range(6)]
    table = {t: [1.0, 0.1 * i] for i, t in enumerate(harmful)} | {t: [0.1 * i, 1.0] for i, t in enumerate(safe)}
    # held out: two harmful answers the probe gets right, one it gets wrong (it reads like the safe
    # ones), one safe answer it gets right -> 3 of 4
    table |= {"bomb recipe x": [1.0, 0.0], "bomb recipe y": [0.9, 0.1], "sunny bomb": [0.0, 1.0],
              "nice weather x": [0.0, 1.0]}
    labelled = tmp_path / "labels.jsonl"
    labelled.write_text("".join(json.dumps({"response": r, "harmful": y}) + "\n" for r, y in [
        ("bomb recipe x", 1), ("nice weather x", 0), ("bomb recipe y", 1), ("sunny bomb", 1)]))
    source = {"path": str(labelled), "prompt": "response"}
    config = JudgeConfig(test_harmful={**source, "where": {"harmful": 1}}, test_safe=[{**source, "where": {"harmful": 0}}])
    held = heldout_examples(config)
    assert held.labels == [1, 1, 1, 0] and held.responses[-1] == "nice weather x"
    judge = EmbeddingJudge(config, _examples(harmful, safe), embedder=_stub_embedder(table))
    assert judge.accuracy == 1.0  # cross-validated on what it was fit on
    assert accuracy_on(judge, held) == 0.75
    assert heldout_examples(JudgeConfig()) is None


def test_embedding_judge_needs_two_examples_per_label():
    from unlearn.data.sources import DataError

    with pytest.raises(DataError, match="at least 2 harmful and 2 safe"):
        EmbeddingJudge(JudgeConfig(), _examples(["a"], ["b", "c"]), embedder=_stub_embedder({}))


@pytest.fixture(scope="module")
def tiny_classifiers(tmp_path_factory):
    from conftest import make_tokenizer
    from transformers import LlamaConfig, LlamaForSequenceClassification

    folders = {}
    for name, labels in (("reward", 1), ("classifier", 2)):
        folder = tmp_path_factory.mktemp(name)
        tokenizer = make_tokenizer(folder, chat=False)
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=1, num_labels=labels,
                             pad_token_id=tokenizer.eos_token_id,
                             id2label={0: "safe", 1: "unsafe"} if labels == 2 else {0: "LABEL_0"})
        torch.manual_seed(0)
        LlamaForSequenceClassification(config).save_pretrained(folder)
        folders[name] = str(folder)
    return folders


def test_reward_judge_threshold(tiny_classifiers):
    examples = _examples(["How to pick a lock", "Here is how"], ["I cannot help", "Paris"])
    loose = RewardJudge(JudgeConfig(kind="reward", path=tiny_classifiers["reward"], threshold=-1e9), examples)
    strict = RewardJudge(JudgeConfig(kind="reward", path=tiny_classifiers["reward"], threshold=1e9), examples)
    responses = ["Here is how to pick a lock.", "", "Paris."]
    assert loose.harmful(["q"] * 3, responses) == [False, False, False]
    assert strict.harmful(["q"] * 3, responses) == [True, False, True]
    assert loose.accuracy == 0.5 and strict.accuracy == 0.5  # all safe / all harmful on 2 + 2 examples


def test_classifier_judge_label_mapping(tiny_classifiers):
    from unlearn.config import ConfigError

    examples = _examples(["bad", "worse"], ["fine"])
    everything = ClassifierJudge(JudgeConfig(kind="classifier", path=tiny_classifiers["classifier"],
                                             harmful_labels=["safe", "unsafe"]), examples)
    assert everything.harmful(["q", "q"], ["Bob lives in Lima.", ""]) == [True, False]
    assert everything.accuracy == pytest.approx(2 / 3)
    by_id = ClassifierJudge(JudgeConfig(kind="classifier", path=tiny_classifiers["classifier"],
                                        harmful_labels=[0, 1]), examples)
    assert by_id.harmful_ids == {0, 1}
    with pytest.raises(ConfigError, match="'toxic' is not a label"):
        ClassifierJudge(JudgeConfig(kind="classifier", path=tiny_classifiers["classifier"],
                                    harmful_labels=["toxic"]), examples)


@pytest.fixture(scope="module")
def llama(tiny_llama):
    from unlearn.models.loading import load_model

    return load_model(str(tiny_llama))


def test_batched_generation_matches_one_at_a_time(llama):
    from unlearn.data.encoding import PairEncoder

    model, tokenizer = llama
    encoder = PairEncoder(tokenizer, "auto", 64)
    prompts = [encoder.prompt_ids(p) for p in ("Who wrote Hamlet?", "Where does Bob live?",
                                                 "What is the capital of France, and why is it Paris?", "Hi")]
    model.train()
    batched = generate(model, tokenizer, prompts, max_new_tokens=6, batch_size=4)
    single = [generate(model, tokenizer, [p], max_new_tokens=6, batch_size=1)[0] for p in prompts]
    assert batched == single
    assert model.training  # the caller's mode is restored
    model.eval()
    sampled = [generate(model, tokenizer, prompts, 6, 2, do_sample=True, seed=3) for _ in range(2)]
    assert sampled[0] == sampled[1]


@pytest.mark.parametrize("min_prefix", [1, 10**9], ids=["shared-opening", "plain"])
def test_generation_with_the_shared_opening_run_once_matches_the_plain_batch(llama, min_prefix, monkeypatch):
    """The prompts' common opening tokens (the template's) run once and reach `generate` as a cache
    repeated over the rows; the answers, greedy and seeded sampling alike, are the plain batch's."""
    from unlearn.data.encoding import PairEncoder
    from unlearn.evaluation import generation

    model, tokenizer = llama
    encoder = PairEncoder(tokenizer, "auto", 64)
    prompts = [encoder.prompt_ids(p) for p in ("Who wrote Hamlet?", "Where does Bob live?",
                                                 "What is the capital of France, and why is it Paris?", "Hi")]
    assert generation.common_prefix(prompts) >= 1
    monkeypatch.setattr(generation, "MIN_SHARED_PREFIX", min_prefix)
    caches = []
    run = model.generate
    monkeypatch.setattr(model, "generate", lambda **kw: caches.append(len(kw)) or run(**kw))
    for kwargs in ({}, {"do_sample": True, "seed": 3}):
        shared = generate(model, tokenizer, prompts, max_new_tokens=6, batch_size=4, **kwargs)
        plain = generate(model, tokenizer, prompts, max_new_tokens=6, batch_size=4, share_prefix=False, **kwargs)
        assert shared == plain
    # generate got a cache (a 4th keyword) exactly when the opening was shared
    assert caches == ([4, 3, 4, 3] if min_prefix == 1 else [3, 3, 3, 3])


def test_common_prefix_leaves_every_prompt_a_token_of_its_own():
    from unlearn.evaluation.generation import common_prefix

    assert common_prefix([[1, 2, 3, 4], [1, 2, 3, 5, 6]]) == 3
    assert common_prefix([[1, 2, 3], [1, 2, 3, 4]]) == 2  # the shorter prompt keeps its last token
    assert common_prefix([[7, 2], [1, 2]]) == 0


def test_answer_scores_match_a_plain_forward(llama):
    from unlearn.data.encoding import Encoded

    model, tokenizer = llama
    rows = [Encoded([1, 20, 21, 22], [30, 31]), Encoded([1, 25], [40, 41, 42])]
    scores = score_answers(model, rows, tokenizer.pad_token_id, batch_size=2, stats=True)
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([rows[1].input_ids])).logits[0].float(), -1)
    expected = [logp[1 + t, token].item() for t, token in enumerate(rows[1].answer_ids)]
    assert scores[1].logprobs == pytest.approx(expected, abs=1e-4)
    position = logp[1]
    mean = (position.exp() * position).sum().item()
    assert scores[1].mean[0] == pytest.approx(mean, abs=1e-4)
    assert len(scores[0].logprobs) == 2 and scores[0].std.min() > 0
