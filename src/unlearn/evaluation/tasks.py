"""Evaluation tasks, registered by the `name:` they have in `eval.tasks`.

A task function gets a `TaskRun` (its config, its prompt sets by role, the stage's model) and
returns flat metrics `{"<metric>@<role>": value}`. Adding a task: a config class in
config/eval.py (its roles, metrics and their directions) and one function here.
"""
from __future__ import annotations

import math
from typing import Callable

from unlearn.data.encoding import Encoded
from unlearn.errors import InputError
from unlearn.evaluation import benchmarks as b
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
    if run.evaluator.heldout_accuracy is not None:  # set when the judge (first line) was built
        values["judge_heldout_accuracy"] = run.evaluator.heldout_accuracy
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


def _nlls(run, questions, rows: list[int], answers: list[str]) -> list[float]:
    """Mean token NLL of each answer given the prompt of its question (`rows`: the question of each)."""
    encoder = questions.encoder
    encoded = [encoder.fit(questions.prompt_ids[row], encoder.answer_ids(a)) for row, a in zip(rows, answers)]
    return [s.nll for s in run.evaluator.score(run.model, encoded)]  # read_prompt_set left room for answers


@task("tofu")
def tofu(run) -> dict[str, float]:
    new_tokens = run.task.max_new_tokens or run.evaluator.config.generation.max_new_tokens
    values, ratios = {}, {}
    for role, questions in run.sets.items():
        every = range(len(questions.prompts))
        nll_answer = _nlls(run, questions, every, questions.references)
        nll_true = _nlls(run, questions, every, questions.alternatives)  # paraphrased (forget/retain) or the answer
        # every perturbed answer of every question scored in one pass, then regrouped by question
        flat = [(row, text) for row, texts in enumerate(questions.perturbed) for text in texts]
        nll_flat = _nlls(run, questions, [r for r, _ in flat], [t for _, t in flat])
        nll_perturbed = [[n for (r, _), n in zip(flat, nll_flat) if r == row] for row in every]
        kept = [row for row, n in enumerate(nll_perturbed) if n]  # questions without wrong answers have no ratio
        ratios[role] = [b.truth_ratio(nll_true[row], nll_perturbed[row]) for row in kept]
        if role in ("forget", "retain"):
            probs = [b.normalised_prob(n) for n in nll_answer]
        else:
            probs = [b.relative_prob(nll_answer[row], nll_perturbed[row]) for row in every]
        recall = [b.rouge_l_recall(o, g) for o, g in zip(run.outputs(role, new_tokens), questions.references)]
        values[f"prob@{role}"] = m.mean(probs)
        values[f"rouge_l_recall@{role}"] = m.mean(recall)
        values[f"truth_ratio@{role}"] = b.truth_ratio_score(ratios[role], forget=role == "forget")
        run.keep(role, truth_ratio=ratios[role], prob=probs, rouge_l_recall=recall)
    utility = [values[f"{metric}@{role}"] for role in run.task.kept
               for metric in ("prob", "rouge_l_recall", "truth_ratio") if f"{metric}@{role}" in values]
    if len(utility) == 3 * len(run.task.kept):
        values["model_utility"] = b.model_utility(utility)
    if run.reference is not None:
        reference = run.reference["values"].get("tofu", {}).get("forget", {}).get("truth_ratio")
        if not reference:
            raise InputError(f"{run.task.reference}: its evaluation has no tofu forget-set truth ratios")
        values["forget_quality"] = b.forget_quality(ratios["forget"], reference)
    return values


@task("muse")
def muse(run) -> dict[str, float]:
    task, values = run.task, {}
    if "verbmem" in run.sets:
        outputs = run.outputs("verbmem", task.max_new_tokens)
        scores = [m.rouge_l(o, gt) for o, gt in zip(outputs, run.sets["verbmem"].references)]
        values["verbmem@forget"] = m.mean(scores)
        run.keep("verbmem", rouge_l=scores)
    for side in ("forget", "retain"):
        role = f"knowmem_{side}"
        if role in run.sets:
            # an answer ends at its line's end: after it the model goes on with the next example
            outputs = [o.split("\n")[0].strip() for o in run.outputs(role, task.knowmem_new_tokens)]
            scores = [m.rouge_l(o, a) for o, a in zip(outputs, run.sets[role].references)]
            values[f"knowmem@{side}"] = m.mean(scores)
            run.keep(role, rouge_l=scores)
    if "privleak_forget" in run.sets:
        scores = {}
        for role in ("privleak_forget", "privleak_holdout"):
            texts = run.sets[role]
            scored = run.evaluator.score(run.model, texts.encoded())
            scores[role] = [MIA_SCORES["min_k"](s, text, task.k) for s, text in zip(scored, texts.references)]
            run.keep(role, min_k=scores[role])
        values["min_k_auc"] = auc(scores["privleak_forget"], scores["privleak_holdout"])
        if run.reference is not None:
            reference = run.reference["metrics"].get("min_k_auc")
            if reference is None:
                raise InputError(f"{task.reference}: its evaluation has no muse min_k_auc")
            values["privleak"] = b.privleak(values["min_k_auc"], reference)
    return values
