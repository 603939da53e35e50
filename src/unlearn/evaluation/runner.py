"""Run the `eval:` tasks on a model and write metrics.json and generations.jsonl.

`unlearn run` builds one Evaluator, evaluates the original model as stage "before" (its outputs on
every prompt set are kept as the original outputs) and the unlearned model as "after". After each
stage both files are rewritten whole: metrics.json = {"before": {...}, "after": {...}, "directions":
{...}} with flat `metric@role -> float` dicts and each metric's direction ("higher", "lower", an ideal
value, or null), generations.jsonl one row per generated output.
`unlearn eval` (evaluate_model) does the same for any saved model against the config's model.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unlearn.config import ConfigError, DataConfig, SourceConfig, load_config
from unlearn.config.eval import AnswerSource, EvalConfig, TofuSource
from unlearn.data.batches import encoder_for
from unlearn.data.encoding import Encoded, PairEncoder
from unlearn.data.sources import DataError, detect_format, read_fields, read_pairs
from unlearn.evaluation.embedding import embed
from unlearn.evaluation.generation import TokenScores, answer_stop_ids, generate, score_answers
from unlearn.evaluation.judges import Judge, accuracy_on, build_judge, heldout_examples, judge_examples
from unlearn.evaluation.tasks import TASKS
from unlearn.io import atomic_write_json, atomic_write_jsonl
from unlearn.layout import OutputDirError, RunFolder
from unlearn.models.prepare import original_model

log = logging.getLogger(__name__)


@dataclass
class PromptSet:
    """One role's rows, encoded the way training encodes them."""

    prompts: list[str]
    references: list[str]  # response / true continuation / right answer ("" when not read)
    prompt_ids: list[list[int]]
    encoder: PairEncoder
    alternatives: list[str] = field(default_factory=list)  # hallucinated answers / TOFU's paraphrased ones
    perturbed: list[tuple[str, ...]] = field(default_factory=list)  # TOFU: wrong answers per question
    answer_ids: list[list[int]] | None = None  # whole texts (MUSE privleak): scored as given, not re-encoded

    def encoded(self) -> list[Encoded]:
        """Prompt + reference answer, for likelihood scoring (answer tail cut to max_length)."""
        if self.answer_ids is not None:
            return [Encoded(ids, answer) for ids, answer in zip(self.prompt_ids, self.answer_ids)]
        rows = [self.encoder.fit(ids, self.encoder.answer_ids(ref)) for ids, ref in zip(self.prompt_ids, self.references)]
        return [row for row in rows if row is not None]


def read_answers(source: AnswerSource) -> list[tuple[str, str, str]]:
    """(question, right answer, hallucinated answer) rows; rows missing any of them are skipped."""
    return read_fields(source, (source.prompt, source.right, source.hallucinated))


def read_prompt_set(source: SourceConfig | AnswerSource | TofuSource, tokenizer, data: DataConfig,
                    reads_responses: bool, where: str, max_rows: int | None = None, template: str | None = None,
                    paraphrased: bool = True) -> PromptSet:
    """A source's rows (the first `max_rows`), encoded as training encodes them (or with `template`);
    prompts that leave no room for an answer within data.max_length are skipped with a warning.
    A TOFU source without `paraphrased` compares the gold answer itself with the perturbed ones."""
    if isinstance(source, AnswerSource):
        rows = read_answers(source)
        encoder = PairEncoder(tokenizer, data.template, data.max_length)
    elif isinstance(source, TofuSource):
        fields = (source.prompt, source.answer, source.paraphrased if paraphrased else source.answer, source.perturbed)
        rows = read_fields(source, fields, lists=(source.perturbed,))  # the perturbed answers ride along
        encoder = PairEncoder(tokenizer, data.template, data.max_length)
    else:
        if reads_responses or detect_format(source) == "text":
            rows = [(p.prompt, p.response, "") for p in read_pairs(source, tokenizer)]
        else:  # prompts only: a file without a response field is fine
            rows = [(prompt, "", "") for (prompt,) in read_fields(source, (source.prompt,))]
        encoder = encoder_for(source, tokenizer, data) if template is None else PairEncoder(tokenizer, template,
                                                                                              data.max_length)
    rows = rows[:max_rows] if max_rows else rows
    kept, ids = [], []
    for row in rows:
        prompt_ids = encoder.prompt_ids(row[0])
        if len(prompt_ids) < data.max_length:
            kept.append(row)
            ids.append(prompt_ids)
    if len(kept) < len(rows):
        log.warning("%s: %d prompts longer than data.max_length=%d skipped", where, len(rows) - len(kept),
                    data.max_length)
    if not kept:
        raise DataError(f"{where}: no prompt fits data.max_length={data.max_length}")
    return PromptSet([r[0] for r in kept], [r[1] for r in kept], ids, encoder, [r[2] for r in kept],
                     [r[3] for r in kept] if isinstance(source, TofuSource) else [])


def read_texts(source: SourceConfig, tokenizer, data: DataConfig, max_rows: int | None = None) -> PromptSet:
    """Whole texts (the `response` field; MUSE's privleak sets) for likelihood scoring: every token
    after the first, up to data.max_length tokens."""
    texts = [text for (text,) in read_fields(source, (source.response,))][:max_rows]
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"][: data.max_length] for text in texts]
    kept = [(text, row) for text, row in zip(texts, ids) if len(row) > 1]
    return PromptSet([t for t, _ in kept], [t for t, _ in kept], [row[:1] for _, row in kept],
                     PairEncoder(tokenizer, "raw", data.max_length), answer_ids=[row[1:] for _, row in kept])


# MUSE's knowledge questions: in-context examples, then the question, the answer after "Answer:"
KNOWMEM_FORMAT = "Question: {prompt}\nAnswer: {response}"


def _muse_template(task, role: str) -> str:
    """Raw text for continuations; for knowledge QA the format string with the in-context examples
    written before it (braces escaped: they are the examples' text, not fields)."""
    if not role.startswith("knowmem"):
        return "raw"
    icl = getattr(task, f"{role}_icl")
    examples = read_fields(icl, (icl.prompt, icl.response)) if icl is not None else []
    prefix = "".join(KNOWMEM_FORMAT.format(prompt=q, response=a) + "\n\n" for q, a in examples)
    return prefix.replace("{", "{{").replace("}", "}}") + KNOWMEM_FORMAT


def read_reference(folder: str, where: str) -> dict:
    """A finished evaluation used as `reference:`: its model's metrics and per-question values (the
    'after' stage when it evaluated a second model, else 'before')."""
    run = RunFolder(Path(folder).expanduser())
    if not run.metrics.is_file() or not run.per_question.is_file():
        raise ConfigError(f"{where}: {folder}: not a finished evaluation (needs metrics.json and per_question.json "
                          "from `unlearn eval` or `unlearn run` with this task)")
    metrics, values = json.loads(run.metrics.read_text()), json.loads(run.per_question.read_text())
    stage = "after" if "after" in values else "before"
    return {"metrics": metrics.get(stage, {}), "values": values.get(stage, {})}


def default_source(role: str, data: DataConfig) -> SourceConfig | None:
    return {"forget": data.forget, "normal": data.normal[0]}.get(role)


@dataclass
class TaskRun:
    """What a task function sees: its config, its prompt sets by role, and the stage's model."""

    task: Any
    sets: dict[str, PromptSet]
    stage: str
    model: Any
    reference_model: Any
    evaluator: "Evaluator"
    reference: dict | None = None  # the task's `reference:` evaluation (read_reference)

    def keep(self, role: str, **values: list[float]) -> None:
        """Per-question values kept in per_question.json (a later evaluation's reference:)."""
        stage = self.evaluator.per_question.setdefault(self.stage, {})
        stage.setdefault(self.task.name, {}).setdefault(role, {}).update(values)

    def outputs(self, role: str, max_new_tokens: int | None = None) -> list[str]:
        return self.evaluator.generate(self, role, max_new_tokens)

    def originals(self, role: str) -> list[str] | None:
        """The 'before' stage's outputs on these prompts (None in the 'before' stage itself)."""
        if self.stage == "before":
            return None
        return self.evaluator.originals.get((self.task.name, role))

    def original_model(self):
        return original_model(self.model, self.reference_model)


class Evaluator:
    """Reads every prompt set once (so bad eval data fails before training), then evaluates stages."""

    def __init__(self, eval_cfg: EvalConfig, tokenizer, data_cfg: DataConfig, output_dir: Path):
        self.config = eval_cfg
        self.tokenizer, self.data, self.output_dir = tokenizer, data_cfg, Path(output_dir)
        self.embed = embed
        self.tasks = [(task, self._load_sets(index, task)) for index, task in enumerate(self.config.tasks)]
        self.references = {index: read_reference(task.reference, f"eval.tasks.{index}.reference")
                           for index, task in enumerate(self.config.tasks) if getattr(task, "reference", None)}
        self.per_question: dict[str, dict] = {}  # stage -> task -> role -> value name -> per-question list
        self._examples = (judge_examples(self.config.judge, data_cfg, tokenizer)
                          if any(task.name == "harmful" for task in self.config.tasks) else None)
        self._heldout = heldout_examples(self.config.judge, tokenizer) if self._examples else None
        self._judge: Judge | None = None
        self.heldout_accuracy: float | None = None  # the judge's on self._heldout, set with the judge
        self.metrics: dict[str, dict[str, float]] = {}
        self.rows: list[dict] = []
        self.originals: dict[tuple[str, str], list[str]] = {}  # (task, role) -> before-stage outputs
        self._cache: dict[tuple, str] = {}  # one stage's outputs by (prompt ids, max_new_tokens)
        self._label = ""  # the `model` field of this stage's generation rows

    def _load_sets(self, index: int, task) -> dict[str, PromptSet]:
        sets = {}
        for role in task.roles:
            source = getattr(task, role) or (default_source(role, self.data) if role in task.defaulted else None)
            if source is None:
                continue
            where = f"eval.tasks.{index}.{role}"
            if role.startswith("privleak"):
                sets[role] = read_texts(source, self.tokenizer, self.data, self.config.max_rows)
            else:
                sets[role] = read_prompt_set(source, self.tokenizer, self.data, task.reads_responses, where,
                                             self.config.max_rows,
                                             template=_muse_template(task, role) if task.name == "muse" else None,
                                             paraphrased=role in ("forget", "retain"))
        return sets

    @property
    def judge(self) -> Judge:
        if self._judge is None:
            self._judge = build_judge(self.config.judge, self._examples)
            self.heldout_accuracy = accuracy_on(self._judge, self._heldout)
        return self._judge

    def score(self, model, rows: list[Encoded], stats: bool = False) -> list[TokenScores]:
        return score_answers(model, rows, self.tokenizer.pad_token_id, self.config.generation.batch_size, stats)

    def generate(self, run: TaskRun, role: str, max_new_tokens: int | None) -> list[str]:
        """Outputs for one prompt set, generated once per stage even if several tasks share prompts."""
        gen = self.config.generation
        prompt_set = run.sets[role]
        new_tokens = max_new_tokens or gen.max_new_tokens
        keys = [(tuple(ids), new_tokens) for ids in prompt_set.prompt_ids]
        missing = list(dict.fromkeys(k for k in keys if k not in self._cache))
        if missing:
            texts = generate(run.model, self.tokenizer, [list(k[0]) for k in missing], new_tokens, gen.batch_size,
                             gen.do_sample, gen.temperature, gen.top_p, gen.seed,
                             answer_stop_ids(self.tokenizer, prompt_set.encoder),
                             description=f"{run.stage} {run.task.name}/{role}")
            self._cache.update(zip(missing, texts))
        outputs = [self._cache[k] for k in keys]
        self.rows += [{"stage": run.stage, "task": run.task.name, "subset": role, "prompt": p, "output": o,
                       "model": self._label} for p, o in zip(prompt_set.prompts, outputs)]
        if run.stage == "before":
            self.originals[(run.task.name, role)] = outputs
        return outputs

    def evaluate_original(self, model, model_files: list | None, model_name: str | None = None) -> dict[str, float]:
        """The "before" stage, from the shared cache when the same model, settings, data and code
        were evaluated before (unlearn.evaluation.cache), else evaluated and stored."""
        from unlearn.evaluation import cache

        # a reference's content is part of the key: the same path may hold a newer evaluation
        settings = {**self.config.model_dump(mode="json"), "references": self.references}
        key = cache.cache_key(model_files, settings, self.data.model_dump(mode="json"))
        entry = cache.load(key)
        if entry is None:
            results = self.evaluate(model, stage="before", model_name=model_name)
            cache.store(key, {"metrics": results, "rows": [r for r in self.rows if r["stage"] == "before"],
                              "originals": [[task, role, outputs] for (task, role), outputs in self.originals.items()],
                              "per_question": self.per_question.get("before", {})})
            return results
        log.info("the original model's evaluation is reused from the cache (%s; UNLEARN_EVAL_CACHE=0 turns it off)", key)
        self.rows = [r for r in self.rows if r["stage"] != "before"] + entry["rows"]
        self.originals.update({(task, role): outputs for task, role, outputs in entry["originals"]})
        self.metrics["before"] = entry["metrics"]
        self.per_question["before"] = entry.get("per_question", {})
        self._write()
        return entry["metrics"]

    def evaluate(self, model, stage: str, reference_model=None, model_name: str | None = None) -> dict[str, float]:
        """Run every task on `model`; `reference_model` is the original for a full fine-tune (a PEFT
        model's original is itself with adapters disabled). Returns the stage's flat metrics."""
        self._label = model_name or _label(model)
        self._cache = {}
        self.rows = [row for row in self.rows if row["stage"] != stage]
        results: dict[str, float] = {}
        self.per_question.pop(stage, None)
        for index, (task, sets) in enumerate(self.tasks):
            values = TASKS[task.name](TaskRun(task, sets, stage, model, reference_model, self,
                                              self.references.get(index)))
            headline = f"{task.headline}@{next(iter(sets))}" if task.headline else None
            if headline in values:
                results[task.headline] = values[headline]
            results.update(values)
        self.metrics[stage] = results
        self._write()
        return results

    def saved(self) -> dict:
        """metrics.json's content: the stages, and which way is better for each metric."""
        return {**self.metrics, "directions": self.config.directions()}

    def _write(self) -> None:
        folder = RunFolder(self.output_dir)
        atomic_write_json(folder.metrics, self.saved())
        atomic_write_jsonl(folder.generations, self.rows)
        if self.per_question:
            atomic_write_json(folder.per_question, self.per_question)


def _label(model) -> str:
    name = str(getattr(model, "name_or_path", "") or type(model).__name__)
    return f"{name} + adapter" if hasattr(model, "peft_config") else name


def _load_target(name: str, config, original):
    """The model to evaluate as 'after' and its reference. A PEFT adapter folder is put on its base
    model; when that base is the config's model, the already loaded original is reused and the
    reference is the base with adapters disabled."""
    from unlearn.models.loading import ModelError, load_model

    folder = Path(name).expanduser()
    if not (folder / "adapter_config.json").is_file():
        model, _ = load_model(name, config.model.dtype, config.model.trust_remote_code, config.model.allow_pickle)
        return model, original
    from peft import PeftModel

    base_name = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base_name:
        raise ModelError(f"{folder}: adapter_config.json names no base_model_name_or_path")
    same_base = _same_model(base_name, config.model.name)
    base = original if same_base else load_model(base_name, config.model.dtype, config.model.trust_remote_code,
                                                 config.model.allow_pickle)[0]
    return PeftModel.from_pretrained(base, str(folder), is_trainable=False), None if same_base else original


def _same_model(a: str, b: str) -> bool:
    from unlearn.models.loading import ModelError, local_folder

    try:
        return Path(local_folder(a)).resolve() == Path(local_folder(b)).resolve()
    except ModelError:  # e.g. an adapter folder (no config.json): not a full model
        return a == b


def evaluate_model(config_path, model: str, output_dir, overrides: list[str] | None = None,
                   overwrite: bool = False, reuse_original_answers: bool = False) -> dict:
    """`unlearn eval`: the config's model is evaluated as "before" (the original outputs), then
    `model` (HF folder, PEFT adapter folder, alias or .gguf) as "after". When `model` is the config's
    model itself only "before" is written. Returns the stages of metrics.json. The before stage is
    taken from the shared cache when this model, eval config, data and code were evaluated before.
    Normal data with `source: original` is answered by the original model first (the judge learns
    from those answers); `reuse_original_answers` takes them from OUTPUT_DIR/original_answers/."""
    from unlearn.data.original import original_answers, uses_original
    from unlearn.evaluation.cache import model_fingerprint
    from unlearn.models.loading import load_model

    config = load_config(config_path, overrides)
    if not config.eval:
        raise ConfigError(f"{config_path}: no eval: section to evaluate with")
    output_dir = Path(output_dir)
    folder = RunFolder(output_dir)
    if folder.metrics.exists() and not overwrite:
        raise OutputDirError(f"{output_dir}: already holds metrics.json; pass --overwrite to replace it")
    for path in (folder.metrics, folder.generations, folder.per_question):
        path.unlink(missing_ok=True)
    output_dir.mkdir(parents=True, exist_ok=True)

    original, tokenizer = load_model(config.model.name, config.model.dtype, config.model.trust_remote_code,
                                     config.model.allow_pickle)
    model_files = model_fingerprint(config.model.name, config.model.dtype)
    data = config.data
    if uses_original(data):  # the judge learns from the normal answers: the original's own, as in the run
        data = original_answers(data, original, tokenizer, output_dir, resume=reuse_original_answers,
                                model_files=model_files)
    evaluator = Evaluator(config.eval, tokenizer, data, output_dir)
    evaluator.evaluate_original(original, model_files, model_name=config.model.name)
    if not _same_model(model, config.model.name):
        target, reference = _load_target(model, config, original)
        evaluator.evaluate(target, "after", reference_model=reference, model_name=model)
    return evaluator.metrics
