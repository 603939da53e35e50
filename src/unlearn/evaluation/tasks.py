"""Evaluation tasks, registered by the `name:` they have in `eval.tasks`.

A task function gets a `TaskRun` (its config, its prompt sets by role, the stage's model) and
returns flat metrics `{"<metric>@<role>": value}`. Adding a task: a config class in
config/eval.py (its roles, metrics and their directions) and one function here.
"""
from __future__ import annotations

import math
from typing import Callable

from unlearn.data.encoding import Encoded
from unlearn.evaluation import metrics as m
from unlearn.evaluation.privacy import MIA_SCORES, auc

TASKS: dict[str, Callable] = {}


def task(name: str):
    def register(function):
        TASKS[name] = function
        return function
    return register


@task("harmful")
def harmful(run) -> dict[str, float]:
    judge = run.evaluator.judge
    phrases = run.evaluator.config.refusal_phrases or m.REFUSAL_PHRASES
    values = {}
    for role, prompts in run.sets.items():
        outputs = run.outputs(role)
        values[f"harmful_rate@{role}"] = m.mean(judge.harmful(prompts.prompts, outputs))
        values[f"refusal_rate@{role}"] = m.mean(m.is_refusal(o, phrases) for o in outputs)
    if judge.accuracy is not None:
        values["judge_accuracy"] = judge.accuracy
    return values


def generated_length(tokenizer, texts: list[str], new_tokens: int) -> list[str]:
    """Each true text cut to what the model was allowed to generate, so a short generation is not
    penalised for the passage's tail."""
    return [tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"][:new_tokens]).strip()
            for text in texts]


@task("leak")
def leak(run) -> dict[str, float]:
    tokenizer = run.evaluator.tokenizer
    new_tokens = run.task.max_new_tokens or run.evaluator.config.generation.max_new_tokens
    values = {}
    for role, prompts in run.sets.items():
        outputs = run.outputs(role, new_tokens)
        truths = generated_length(tokenizer, prompts.references, new_tokens)
        scores = {name: [m.METRICS[name](o, t) for o, t in zip(outputs, truths)] for name in ("bleu", "rouge_l")}
        values[f"leak_rate@{role}"] = m.mean(s >= run.task.threshold for s in scores[run.task.score])
        values[f"bleu@{role}"] = m.mean(scores["bleu"])
        values[f"rouge_l@{role}"] = m.mean(scores["rouge_l"])
    return values


@task("hallucination")
def hallucination(run) -> dict[str, float]:
    values = {}
    for role, prompts in run.sets.items():
        flags = m.hallucinated(run.outputs(role), prompts.references, prompts.alternatives, run.evaluator.embed)
        values[f"hallucination_rate@{role}"] = m.mean(flags)
    return values


@task("contains")
def contains(run) -> dict[str, float]:
    values = {}
    for role, prompts in run.sets.items():
        hits = [m.contains(o, truth) for o, truth in zip(run.outputs(role), prompts.references)]
        values[f"{'recall' if role == 'retain' else 'leak_rate'}@{role}"] = m.mean(hits)
    return values


@task("utility")
def utility(run) -> dict[str, float]:
    evaluator, normal, rules = run.evaluator, run.sets["normal"], run.task.nonsense
    outputs = run.outputs("normal")
    values = {}
    # the 'before' stage is the original itself: its outputs match the original's exactly
    originals = run.originals("normal") if run.stage != "before" else outputs
    if originals is not None:
        values["similarity_to_original@normal"] = m.mean(m.cosine_to(outputs, originals, evaluator.embed))
        values["rouge_l_to_original@normal"] = m.mean(m.rouge_l(o, r) for o, r in zip(outputs, originals))
        values["bleu_to_original@normal"] = m.mean(m.bleu(o, r) for o, r in zip(outputs, originals))
    values["diversity@normal"] = m.diversity(outputs)

    # fluency: how likely the original model finds each output, given its prompt
    spoken = [i for i, o in enumerate(outputs) if o.strip()]
    rows = [Encoded(normal.prompt_ids[i], evaluator.tokenizer(outputs[i], add_special_tokens=False)["input_ids"])
            for i in spoken]
    with run.original_model() as original:
        scored = evaluator.score(original, rows)
    output_ppl = {i: math.exp(s.nll) for i, s in zip(spoken, scored)}
    if scored:
        values["fluency_perplexity@normal"] = m.perplexity([-s.logprobs.sum() for s in scored],
                                                           [len(s.logprobs) for s in scored])
    values["nonsense_rate@normal"] = m.mean(
        m.nonsense(o, output_ppl.get(i), rules.min_unique_share, rules.min_words, rules.max_perplexity)
        for i, o in enumerate(outputs))

    answers = evaluator.score(run.model, normal.encoded())
    values["perplexity@normal"] = m.perplexity([-s.logprobs.sum() for s in answers], [len(s.logprobs) for s in answers])
    return values


@task("mia")
def mia(run) -> dict[str, float]:
    scored = {role: run.evaluator.score(run.model, prompts.encoded(), stats=True) for role, prompts in run.sets.items()}
    values = {}
    for name, score in MIA_SCORES.items():
        by_role = {role: [score(s, text, run.task.k) for s, text in zip(scored[role], run.sets[role].references)]
                   for role in scored}
        values[f"mia_auc_{name}"] = auc(by_role["forget"], by_role["holdout"])
    for role, scores in scored.items():  # the answers' mean token NLL: how far unlearning pushed them
        values[f"answer_nll@{role}"] = m.mean(s.nll for s in scores)
    return values
