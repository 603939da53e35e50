"""`source: original` for normal (and mismatch-pool) data: the original model's own answers.

A dataset's answers to normal prompts are not what the model says: TruthfulQA's one-line "Best
Answer" is not SmolLM2's paragraph. A KL to the original measured on the dataset's answers holds
the model's next-token distributions along text it never writes, so greedy answers can drift while
the KL stays small. With `source: original` the normal rows' answers are the original model's own
greedy answers (`answer_tokens` new tokens), generated once before training: the KL then holds
exactly the paths the model's outputs follow. The answers are written to
OUTPUT_DIR/original_answers/ (one JSONL per source, prompt + response) and reused on --resume;
like the original model's evaluation (unlearn.evaluation.cache) they are also kept in
UNLEARN_CACHE/original/ and reused by any run with the same model files, source, template and code.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from unlearn.config import DataConfig, SourceConfig
from unlearn.data.batches import encoder_for
from unlearn.data.sources import DataError, detect_format, read_fields, read_pairs, source_name
from unlearn.io import atomic_write_jsonl, read_jsonl
from unlearn.layout import RunFolder

log = logging.getLogger(__name__)



def uses_original(data: DataConfig) -> bool:
    return any(source.source == "original" for source in data.normal + (data.mismatch_pool or []))


def original_answers(data: DataConfig, model, tokenizer, output_dir: Path, *, resume: bool = False,
                     write: bool = True, batch_size: int = 16, model_files: list | None = None) -> DataConfig:
    """`data` with every `source: original` replaced by a JSONL of the model's greedy answers to its
    prompts. Call it with the model before unlearning. `write` False (non-main processes) reads the
    files the main process wrote."""
    if not uses_original(data):
        return data
    folder = RunFolder(output_dir).original_answers
    done: dict[str, SourceConfig] = {}  # a source named twice (normal and mismatch pool) is answered once

    def replace(source: SourceConfig, where: str) -> SourceConfig:
        if source.source != "original":
            return source
        key = json.dumps(source.model_dump(exclude={"weight"}), sort_keys=True)
        if key not in done:
            path = folder / f"{where}.jsonl"
            if write and not (resume and path.is_file()):
                _answer(source, where, path, data, model, tokenizer, batch_size, model_files)
            done[key] = SourceConfig(path=str(path), prompt="prompt", response="response", format="jsonl")
        return done[key].model_copy(update={"weight": source.weight})

    normal = [replace(s, f"normal-{i}") for i, s in enumerate(data.normal)]
    pool = [replace(s, f"mismatch_pool-{i}") for i, s in enumerate(data.mismatch_pool)] if data.mismatch_pool else None
    return data.model_copy(update={"normal": normal, "mismatch_pool": pool})


def _answer(source: SourceConfig, where: str, path: Path, data: DataConfig, model, tokenizer, batch_size: int,
            model_files: list | None) -> None:
    from unlearn.evaluation import cache
    from unlearn.evaluation.generation import answer_stop_ids, generate
    from unlearn.models.loading import cache_dir

    key = cache.cache_key(model_files, source.model_dump(mode="json", exclude={"weight"}),
                          {"template": data.template, "max_length": data.max_length})
    cached = cache_dir() / "original" / f"{key}.jsonl" if key else None
    if cached is not None and cached.is_file():
        log.info("%s: the original answers are reused from %s", where, cached)
        atomic_write_jsonl(path, read_jsonl(cached))
        return

    encoder = encoder_for(source, tokenizer, data)
    if detect_format(source) == "text":  # a text file's windows: only the prompt part is kept
        prompts = [pair.prompt for pair in read_pairs(source, tokenizer)]
    else:  # the file needs no answers
        prompts = [fields[0] for fields in read_fields(source, (source.prompt,))]
    prompts = list(dict.fromkeys(prompts))
    if not prompts:
        raise DataError(f"{source_name(source)}: no prompts to answer (data.{where})")
    answers = generate(model, tokenizer, [encoder.prompt_ids(p) for p in prompts], source.answer_tokens, batch_size,
                       stop_ids=answer_stop_ids(tokenizer, encoder), description=f"original answers ({where})")
    rows = [{"prompt": p, "response": a} for p, a in zip(prompts, answers) if a.strip()]
    if len(rows) < len(prompts):
        log.warning("%s: the original model answered %d of %d prompts with nothing; those are left out",
                    source_name(source), len(prompts) - len(rows), len(prompts))
    if not rows:
        raise DataError(f"{source_name(source)}: the original model answered every prompt with nothing (data.{where})")
    atomic_write_jsonl(path, rows)
    if cached is not None:
        try:
            atomic_write_jsonl(cached, rows)
        except OSError as exc:  # a read-only cache must not fail the run
            log.warning("could not cache the original answers: %s", exc)
    log.info("%s: %d original answers written to %s", where, len(rows), path)
