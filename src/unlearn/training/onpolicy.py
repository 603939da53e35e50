"""On-policy negatives (`data.forget.source: self`): unlearn what the model itself says.

For every forget prompt the model samples `onpolicy.samples` answers (eval mode, LoRA adapters on,
seeded, with the training RNG left untouched); a judge scores each answer, and the flagged ones
are the forget rows (plus the file's own responses with `mix_dataset`). With `every: R`, a new
round re-samples the current model every R steps and replaces the set, until the judge flags
nothing (training stops: nothing left to unlearn) or max_steps ends.

Every round appends a `kind: onpolicy` row to train_log.jsonl and rewrites negatives.jsonl (every
round's answers, flagged or not, with the judge's score). The round counter and the current set
are part of the checkpoint, so a resumed run trains on the same negatives as an uninterrupted one.
"""
from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Callable

from unlearn.config import ConfigError, DataConfig, RunConfig
from unlearn.config.eval import AnswerSource
from unlearn.data.batches import UnlearnData
from unlearn.data.sources import DataError, detect_format
from unlearn.evaluation.generation import answer_stop_ids, generate
from unlearn.evaluation.runner import PromptSet, read_prompt_set
from unlearn.io import atomic_write_jsonl, read_jsonl
from unlearn.layout import RunFolder
from unlearn.training.tracking import TrainLog

log = logging.getLogger(__name__)


# (forget prompts, prompt index of each answer, answers) -> (score per answer, flagged per answer)
Check = Callable[[PromptSet, list[int], list[str]], tuple[list[float], list[bool]]]


def harmful_check(config: RunConfig, tokenizer) -> Check:
    """The harmful task's judge, with the run's eval.judge settings (defaults without an eval: section).
    Score: the judge's harmful probability (embedding) or reward (reward), else the verdict as 0/1."""
    from unlearn.config.eval import JudgeConfig
    from unlearn.evaluation.judges import build_judge, judge_examples

    settings = config.eval.judge if config.eval else JudgeConfig()
    try:
        examples = judge_examples(settings, config.data, tokenizer)
    except DataError as exc:
        if settings.harmful:
            raise
        raise DataError(f"{exc} (the harmful judge learns from the data.forget responses unless "
                        "eval.judge.harmful names labelled harmful examples)") from None
    judge = build_judge(settings, examples)

    def score(rows: PromptSet, which: list[int], answers: list[str]):
        prompts = [rows.prompts[i] for i in which]
        flags = judge.harmful(prompts, answers)
        scores = judge.scores(prompts, answers) if hasattr(judge, "scores") else flags
        return [float(s) for s in scores], flags
    return score


def leak_check(config: RunConfig, tokenizer) -> Check:
    """The answer contains (or, by BLEU / ROUGE-L, overlaps) the protected text, cut to the
    generated length as the leak task cuts it."""
    from unlearn.evaluation.metrics import METRICS
    from unlearn.evaluation.tasks import generated_length

    settings = config.data.onpolicy
    compare = METRICS[settings.score]

    def score(rows: PromptSet, which: list[int], answers: list[str]):
        truths = generated_length(tokenizer, [rows.references[i] for i in which], settings.max_new_tokens)
        scores = [compare(answer, truth) for answer, truth in zip(answers, truths)]
        return scores, [bool(a.strip()) and s >= settings.threshold for a, s in zip(answers, scores)]
    return score


def hallucination_check(config: RunConfig, tokenizer, embed=None) -> Check:
    """The answer's embedding is closer to the hallucinated answer than to the right one (the
    hallucination task's rule). Score: cosine to the hallucinated answer minus cosine to the right one."""
    from unlearn.evaluation.embedding import embed as minilm
    from unlearn.evaluation.metrics import hallucination_margin

    embed = embed or minilm

    def score(rows: PromptSet, which: list[int], answers: list[str]):
        margins = hallucination_margin(answers, [rows.references[i] for i in which],
                                       [rows.alternatives[i] for i in which], embed)
        return margins, [bool(a.strip()) and m > 0 for a, m in zip(answers, margins)]
    return score


# onpolicy.judge -> builder(run config, tokenizer) of its check
CHECKS: dict[str, Callable[[RunConfig, object], Check]] = {
    "harmful": harmful_check, "leak": leak_check, "hallucination": hallucination_check}


def forget_fields(data: DataConfig) -> tuple[str, ...]:
    """The fields the forget file must have: the prompt, and what the judge and mix_dataset read."""
    settings, source = data.onpolicy, data.forget
    fields = [source.prompt]
    if settings.judge == "hallucination":
        fields += [source.response, settings.reference]
    elif settings.judge == "leak":
        fields.append(settings.reference or source.response)
    if settings.mix_dataset:
        fields.append(source.response)
    return tuple(dict.fromkeys(fields))


def read_forget_prompts(config: RunConfig, tokenizer) -> PromptSet:
    """The forget prompts, with what the judge compares answers with: `references` holds the
    protected text (leak) or the right answer (hallucination), `alternatives` the hallucinated one."""
    data, settings = config.data, config.data.onpolicy
    source = data.forget
    if settings.judge == "hallucination":
        if detect_format(source) == "text":
            raise ConfigError("data.onpolicy.judge: hallucination needs question/answer rows, not plain text")
        source = AnswerSource(path=source.path, prompt=source.prompt, right=settings.reference,
                              hallucinated=source.response, format=source.format, limit=source.limit,
                              skip=source.skip, where=source.where)
    elif settings.reference:
        source = source.model_copy(update={"response": settings.reference})
    return read_prompt_set(source, tokenizer, data, reads_responses=settings.judge != "harmful", where="data.forget")


def round_seed(seed: int, round_: int) -> int:
    return random.Random(f"{seed}-round-{round_}").randrange(2**31)


def sample_answers(model, tokenizer, rows: PromptSet, settings, seed: int,
                   round_: int = 0) -> tuple[list[int], list[str]]:
    """`settings.samples` sampled answers per prompt, grouped by prompt: (prompt index, answer) lists.
    The same model and seed give the same answers; generate() runs in eval mode, restores the
    model's mode after, and forks the RNG it reseeds, so training's random stream is unchanged."""
    which = [index for index in range(len(rows.prompts)) for _ in range(settings.samples)]
    answers = generate(model, tokenizer, [rows.prompt_ids[i] for i in which], settings.max_new_tokens,
                       settings.batch_size, do_sample=True, temperature=settings.temperature,
                       top_p=settings.top_p, seed=seed, stop_ids=answer_stop_ids(tokenizer, rows.encoder),
                       description=f"on-policy round {round_}")
    return which, answers


class OnPolicyNegatives:
    """A training-loop hook (training.loop.StepHook) that owns the forget rows of `data`."""

    def __init__(self, config: RunConfig, tokenizer, data: UnlearnData, output_dir: Path,
                 judge: Check | None = None):
        self.settings = config.data.onpolicy
        self.max_steps = config.train.max_steps
        self.tokenizer, self.data, self.output_dir = tokenizer, data, Path(output_dir)
        self.rows = read_forget_prompts(config, tokenizer)
        self.check = judge or CHECKS[self.settings.judge](config, tokenizer)
        self.dataset_rows = list(data.forget)  # the file's own rows (mix_dataset), kept in every round
        self.round = -1  # no round yet
        self.negatives: list[dict] = []  # the current round's flagged answers: what training unlearns
        self.rounds: list[dict] = []  # the log row of every round
        self.stopped: str | None = None
        self.log: TrainLog | None = None  # set by before_training

    @property
    def path(self) -> Path:
        return RunFolder(self.output_dir).negatives

    def before_training(self, model, log: TrainLog) -> str | None:
        self.log = log
        if self.round < 0:
            return self.new_round(model, step=0)
        # resumed: the checkpoint's set is in use; drop answers of rounds sampled after it
        atomic_write_jsonl(self.path, self._saved_before(self.round + 1))
        return self.stopped

    def after_step(self, step: int, model, row: dict) -> str | None:
        every = self.settings.every
        if every and step % every == 0 and step < self.max_steps and self.stopped is None:
            return self.new_round(model, step)
        return None

    def new_round(self, model, step: int) -> str | None:
        """Sample, judge, keep the flagged answers; a stop reason when the judge flags none."""
        self.round += 1
        tick = time.perf_counter()
        which, answers = sample_answers(model, self.tokenizer, self.rows, self.settings,
                                        round_seed(self.settings.seed, self.round), self.round)
        scores, flags = self.check(self.rows, which, answers)
        samples = [{"round": self.round, "step": step, "prompt": self.rows.prompts[i], "response": answer,
                    "score": float(score), "flagged": bool(flag)}
                   for i, answer, score, flag in zip(which, answers, scores, flags)]
        atomic_write_jsonl(self.path, self._saved_before(self.round) + samples)
        flagged = [s for s in samples if s["flagged"]]
        row = {"step": step, "kind": "onpolicy", "round": self.round, "samples": len(samples),
               "flagged": len(flagged), "flagged_share": len(flagged) / len(samples),
               "negatives": len(flagged) + len(self.dataset_rows), "seconds": round(time.perf_counter() - tick, 4)}
        self.log.write(row)
        self.rounds.append(row)
        log.info("on-policy round %d (step %d): %d of %d answers flagged", self.round, step, len(flagged), len(samples))
        if not flagged:
            self.stopped = (f"on-policy round {self.round} (step {step}): the judge flagged none of "
                            f"{len(samples)} sampled answers, nothing left to unlearn")
            return self.stopped
        self._use(flagged)
        return None

    def _saved_before(self, round_: int) -> list[dict]:
        """The answers negatives.jsonl holds from rounds before `round_`."""
        return [r for r in read_jsonl(self.path) if isinstance(r.get("round"), int) and r["round"] < round_]

    def _use(self, negatives: list[dict]) -> None:
        self.negatives = negatives
        encoded = (self.rows.encoder.encode(n["prompt"], n["response"]) for n in negatives)
        self.data.set_forget(self.dataset_rows + [row for row in encoded if row is not None])

    def summary(self) -> dict:
        return {"onpolicy": {"judge": self.settings.judge, "rounds": self.rounds, "negatives": len(self.negatives),
                             "stopped": self.stopped}}

    def state_dict(self) -> dict:
        return {"round": self.round, "negatives": self.negatives, "rounds": self.rounds, "stopped": self.stopped}

    def load_state_dict(self, state: dict) -> None:
        self.round, self.rounds, self.stopped = state["round"], state["rounds"], state["stopped"]
        if state["negatives"]:
            self._use(state["negatives"])
