"""Tokenise every data set once, then compose each step's packed batch from the step index alone.

A step holds `batch_size` forget rows, `mismatch_k` mismatch rows per forget row (the forget
prompt followed by an answer drawn from the mismatch pool) and `normal_batch_size` normal rows;
with a guard pool (refusal_guard), also one guard row per normal row: the normal prompt followed by
an answer drawn from that pool.
Which rows a step takes is a pure function of (seed, step), so a resumed run composes exactly the
batches an uninterrupted run would have, with no sampler state to save. Forget rows are visited in
a fresh shuffled order each epoch (the paper's code never shuffled, so it only used the first rows).
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import torch

from unlearn.config import DataConfig, SourceConfig
from unlearn.data.encoding import Encoded, PairEncoder, TruncationCount, pad_rows
from unlearn.data.sources import DataError, Pair, detect_format, read_pairs, source_name

log = logging.getLogger(__name__)

GROUPS = ("forget", "mismatch", "normal", "guard")


def encoder_for(source: SourceConfig, tokenizer, data: DataConfig) -> PairEncoder:
    template = "raw" if detect_format(source) == "text" else data.template
    return PairEncoder(tokenizer, template, data.max_length)


def encode_source(source: SourceConfig, tokenizer, data: DataConfig,
                  pairs: list[Pair] | None = None) -> tuple[list[Pair], list[Encoded]]:
    encoder = encoder_for(source, tokenizer, data)
    pairs = read_pairs(source, tokenizer) if pairs is None else pairs
    count = TruncationCount()
    kept_pairs, encoded = [], []
    for pair in pairs:
        row = encoder.encode(pair.prompt, pair.response)
        if row is None:
            count.dropped += 1
            continue
        count.truncated += row.truncated
        kept_pairs.append(pair)
        encoded.append(row)
    if count.truncated or count.dropped:
        log.warning("%s: %d rows truncated to max_length=%d, %d dropped (prompt alone too long)",
                    source_name(source), count.truncated, data.max_length, count.dropped)
    if not encoded:
        raise DataError(f"{source_name(source)}: every row is longer than data.max_length={data.max_length}")
    return kept_pairs, encoded


@dataclass
class StepBatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    row_group: list[str]  # one of GROUPS per row

    def select(self, groups: tuple[str, ...]) -> "StepBatch":
        keep = [i for i, g in enumerate(self.row_group) if g in groups]
        index = torch.tensor(keep, dtype=torch.long)
        return StepBatch(self.input_ids[index], self.attention_mask[index], self.labels[index],
                         [self.row_group[i] for i in keep])

    @property
    def answer_tokens(self) -> int:
        return int((self.labels != -100).sum())


class UnlearnData:
    """Tokenised forget rows, weighted normal sources and a mismatch answer pool."""

    def __init__(self, forget: list[Encoded], normal: list[list[Encoded]], normal_weights: list[float],
                 pool_answers: list[list[int]], pad_id: int, max_length: int, seed: int,
                 batch_size: int, normal_batch_size: int, mismatch_k: int,
                 guard_answers: list[list[int]] | None = None):
        if not any(normal):
            raise DataError("data.normal: no rows")
        self.forget, self.normal, self.pool_answers = forget, normal, pool_answers
        total = sum(normal_weights)
        self.normal_weights = [w / total for w in normal_weights]
        self.pad_id, self.max_length, self.seed = pad_id, max_length, seed
        self.batch_size, self.normal_batch_size, self.mismatch_k = batch_size, normal_batch_size, mismatch_k
        self.guard_answers = guard_answers
        self._orders: dict[tuple[int, int, int], list[int]] = {}

    def _epoch_order(self, rows: int, epoch: int, salt: int) -> list[int]:
        key = (rows, epoch, salt)
        if key not in self._orders:
            order = list(range(rows))
            random.Random(f"{self.seed}-{salt}-{epoch}").shuffle(order)
            self._orders = {k: v for k, v in self._orders.items() if k[1] >= epoch - 1}
            self._orders[key] = order
        return self._orders[key]

    def _cyclic(self, rows: int, start: int, count: int, salt: int) -> list[int]:
        picked = []
        for position in range(start, start + count):
            epoch, offset = divmod(position, rows)
            picked.append(self._epoch_order(rows, epoch, salt)[offset])
        return picked

    def set_forget(self, rows: list[Encoded]) -> None:
        """Replace the forget rows (on-policy negatives). A step's rows stay a function of (seed, step)
        and the current rows, so a resumed run that restores the same rows composes the same batches."""
        self.forget = rows

    def forget_indices(self, step: int) -> list[int]:
        if not self.forget:
            raise DataError("data.forget: no rows")
        return self._cyclic(len(self.forget), step * self.batch_size, self.batch_size, salt=0)

    def step_batch(self, step: int) -> StepBatch:
        rng = random.Random(f"{self.seed}-step-{step}")
        rows: list[Encoded] = []
        groups: list[str] = []
        forget_rows = [self.forget[i] for i in self.forget_indices(step)]
        rows += forget_rows
        groups += ["forget"] * len(forget_rows)
        if self.mismatch_k and self.pool_answers:
            for row in forget_rows:
                for _ in range(self.mismatch_k):
                    answer = self.pool_answers[rng.randrange(len(self.pool_answers))]
                    fitted = Encoded(row.prompt_ids, answer[: self.max_length - len(row.prompt_ids)])
                    if fitted.answer_ids:
                        rows.append(fitted)
                        groups.append("mismatch")
        # normal rows: each slot picks a source by weight, each source is walked in shuffled epochs
        sources = rng.choices(range(len(self.normal)), weights=self.normal_weights, k=self.normal_batch_size)
        for source in sorted(set(sources)):
            count = sources.count(source)
            seen = step * self.normal_batch_size  # a position that advances every step
            for index in self._cyclic(len(self.normal[source]), seen, count, salt=1 + source):
                rows.append(self.normal[source][index])
                groups.append("normal")
        if self.guard_answers:  # drawn after everything else: the other rows do not depend on it
            for row in [r for r, g in zip(rows, groups) if g == "normal"]:
                answer = self.guard_answers[rng.randrange(len(self.guard_answers))]
                fitted = Encoded(row.prompt_ids, answer[: self.max_length - len(row.prompt_ids)])
                if fitted.answer_ids:
                    rows.append(fitted)
                    groups.append("guard")
        padded = pad_rows(rows, self.pad_id)
        return StepBatch(padded["input_ids"], padded["attention_mask"], padded["labels"], groups)


def build_data(data: DataConfig, tokenizer, *, seed: int, batch_size: int, normal_batch_size: int,
               mismatch_k: int, mismatch_answers: list[str] | None = None,
               guard_answers: list[str] | None = None) -> UnlearnData:
    """Read and tokenise everything once. `mismatch_answers` replaces the pool (e.g. refusals);
    `guard_answers` (refusals) are paired with normal prompts as guard rows.
    With data.forget.source: self the forget rows start empty (or as the file's own rows with
    onpolicy.mix_dataset); training.onpolicy adds the model's own flagged answers."""
    from_file = data.forget.source == "dataset" or data.onpolicy.mix_dataset
    forget = encode_source(data.forget, tokenizer, data)[1] if from_file else []
    normal = [encode_source(source, tokenizer, data)[1] for source in data.normal]
    if mismatch_answers is not None:
        encoder = PairEncoder(tokenizer, data.template, data.max_length)
        pool = [encoder.answer_ids(text) for text in mismatch_answers]
    else:
        pool_sources = data.mismatch_pool or data.normal
        pool = []
        for source in pool_sources:
            encoder = encoder_for(source, tokenizer, data)
            pool += [encoder.answer_ids(pair.response) for pair in read_pairs(source, tokenizer)]
    guard = None
    if guard_answers:
        encoder = PairEncoder(tokenizer, data.template, data.max_length)
        guard = [encoder.answer_ids(text) for text in guard_answers]
    return UnlearnData(forget, normal, [s.weight for s in data.normal], pool, tokenizer.pad_token_id,
                       data.max_length, seed, batch_size, normal_batch_size, mismatch_k, guard)
