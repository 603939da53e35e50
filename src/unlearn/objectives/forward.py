"""One forward pass over a packed step batch, returning only what the objectives read.

The language-model head runs on answer positions only (prompt and padding positions never reach
the vocabulary projection), and full-vocabulary log-probabilities are kept only for the groups
that an objective needs them for (the KL on normal rows). The reference ("original") model is the
same network with LoRA adapters disabled, or a frozen copy for a full fine-tune.

Rows of very different lengths (a long forget answer beside short mismatch rows) are split into a
few length buckets, each padded only to its own longest row, when that saves more padded positions
than a forward costs; everything is returned in the batch's row order, so the split is invisible
to the objectives.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from unlearn.data.batches import StepBatch
from unlearn.data.encoding import IGNORE

# What one extra forward costs, in padded token positions (kernel launches, small matmuls):
# splitting rows into one more length bucket must save more positions than this.
BUCKET_COST_TOKENS = 128


@dataclass
class Needs:
    """What the active objectives read from a forward pass."""

    full_logprobs: set[str] = field(default_factory=set)  # groups needing full-vocab log-probs
    reference_logps: set[str] = field(default_factory=set)  # groups needing reference token log-probs
    reference_full: set[str] = field(default_factory=set)  # groups needing reference full log-probs
    hidden_layer: int | None = None  # decoder layer whose output an objective reads
    reference_hidden: set[str] = field(default_factory=set)

    def merge(self, other: "Needs") -> "Needs":
        return Needs(self.full_logprobs | other.full_logprobs, self.reference_logps | other.reference_logps,
                     self.reference_full | other.reference_full,
                     other.hidden_layer if other.hidden_layer is not None else self.hidden_layer,
                     self.reference_hidden | other.reference_hidden)

    @property
    def reference_groups(self) -> set[str]:
        return self.reference_logps | self.reference_full | self.reference_hidden


@dataclass
class Pass:
    """Answer-position quantities of one model over some rows."""

    logps: torch.Tensor  # (N,) log p(label) at each answer position, row-major
    position_row: torch.Tensor  # (N,) row of each position
    row_group: list[str]
    full_logprobs: dict[str, torch.Tensor]  # group -> (N_group, V)
    hidden: torch.Tensor | None = None  # (rows, T, D) output of the chosen layer
    attention_mask: torch.Tensor | None = None

    def _positions(self, group: str) -> torch.Tensor:
        rows = torch.tensor([g == group for g in self.row_group], device=self.position_row.device)
        return rows[self.position_row]

    def token_logps(self, group: str) -> torch.Tensor:
        return self.logps[self._positions(group)]

    def sequence_logps(self, group: str) -> torch.Tensor:
        """Sum of answer log-probs per row of `group`, in row order."""
        rows = [i for i, g in enumerate(self.row_group) if g == group]
        sums = torch.zeros(len(self.row_group), dtype=self.logps.dtype, device=self.logps.device)
        sums = sums.index_add(0, self.position_row, self.logps)
        return sums[rows]

    def sequence_lengths(self, group: str) -> torch.Tensor:
        rows = [i for i, g in enumerate(self.row_group) if g == group]
        counts = torch.zeros(len(self.row_group), device=self.logps.device)
        counts = counts.index_add(0, self.position_row, torch.ones_like(self.logps))
        return counts[rows]

    def group_hidden(self, group: str) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [i for i, g in enumerate(self.row_group) if g == group]
        return self.hidden[rows], self.attention_mask[rows]


@dataclass
class StepOutputs:
    current: Pass
    reference: Pass | None


def length_buckets(lengths: list[int], cost: int = BUCKET_COST_TOKENS) -> list[list[int]]:
    """Split rows into groups of similar length, minimising padded positions + `cost` per group.

    Rows are sorted by length and cut into contiguous runs by dynamic programming; each run is
    one forward padded to its longest row. Returns row indices, each bucket in ascending order."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    best = [0.0] + [float("inf")] * len(order)  # best[j]: cheapest split of the j longest rows
    cut = [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        for start in range(end):
            price = best[start] + cost + (end - start) * lengths[order[start]]
            if price < best[end]:
                best[end], cut[end] = price, start
    buckets, end = [], len(order)
    while end:
        buckets.append(sorted(order[cut[end]:end]))
        end = cut[end]
    return buckets[::-1]


def unwrap(model):
    return model.module if hasattr(model, "module") and not hasattr(model, "disable_adapter") else model


@contextlib.contextmanager
def head_on(model, keep: torch.Tensor):
    """Feed the LM head only the hidden states at `keep` positions, inside the model's own forward.

    The head then returns (N, V) logits for the N kept positions, and the model never builds the
    (rows, T, V) tensor. Hooking the head (instead of calling it on returned hidden states) keeps
    the computation inside forward(), where DDP and FSDP expect every parameter to be used."""
    hook = unwrap(model).get_output_embeddings().register_forward_pre_hook(
        lambda module, args: (args[0][keep],) + tuple(args[1:]))
    try:
        yield
    finally:
        hook.remove()


def _forward(model, input_ids, attention_mask, labels, hidden_layer):
    """(N, V) logits at answer-predicting positions, their targets, and the chosen layer's output."""
    targets = labels[:, 1:]
    keep = F.pad(targets != IGNORE, (0, 1))  # position t predicts token t+1
    with head_on(model, keep):
        outputs = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                        output_hidden_states=hidden_layer is not None)
    hidden = outputs.hidden_states[hidden_layer + 1] if hidden_layer is not None else None
    return outputs.logits, targets[keep[:, :-1]], keep.nonzero(as_tuple=True)[0], hidden


def _model_pass(model, batch: StepBatch, full_groups: set[str], hidden_layer: int | None,
                split_rows: bool = True) -> Pass:
    lengths = batch.attention_mask.sum(1).tolist()  # rows are right-padded
    parts = []
    for rows in length_buckets(lengths) if split_rows else [list(range(len(lengths)))]:
        index = torch.tensor(rows, device=batch.input_ids.device)
        width = max(lengths[i] for i in rows)
        logits, targets, row, hidden = _forward(model, batch.input_ids[index, :width],
                                                batch.attention_mask[index, :width],
                                                batch.labels[index, :width], hidden_layer)
        parts.append((logits, targets, index[row], hidden, index))
    logits, targets, row_index = (torch.cat([p[i] for p in parts]) for i in range(3))
    if len(parts) > 1:  # back to row-major order: current and reference passes must align
        order = torch.sort(row_index, stable=True).indices
        logits, targets, row_index = logits[order], targets[order], row_index[order]
    logits = logits.float()
    logps = -F.cross_entropy(logits, targets, reduction="none")  # no (N, V) log-softmax kept
    full = {}
    for group in full_groups:
        rows = torch.tensor([g == group for g in batch.row_group], device=row_index.device)
        full[group] = F.log_softmax(logits[rows[row_index]], dim=-1)
    hidden = None
    if hidden_layer is not None:
        width = batch.input_ids.shape[1]
        padded = torch.cat([F.pad(p[3], (0, 0, 0, width - p[3].shape[1])) for p in parts])
        hidden = padded[torch.cat([p[4] for p in parts]).argsort()]
    return Pass(logps, row_index, list(batch.row_group), full, hidden, batch.attention_mask)


@contextlib.contextmanager
def original_model(model, frozen_copy):
    """The model before unlearning: adapters off (LoRA) or the frozen copy (full fine-tune).
    Both run in eval mode: the original's distribution has no dropout noise (OPT and GPT-2 train
    with dropout 0.1, which would otherwise make the KL target random)."""
    if frozen_copy is not None:
        yield frozen_copy
    else:
        training = model.training
        model.eval()
        try:
            with unwrap(model).disable_adapter():
                yield model
        finally:
            model.train(training)


def step_forward(model, batch: StepBatch, needs: Needs, frozen_copy=None, split_rows: bool = True) -> StepOutputs:
    """split_rows=False: one forward per pass (sharded models need the same number of forwards,
    each a collective, on every process)."""
    current = _model_pass(model, batch, needs.full_logprobs, needs.hidden_layer, split_rows)
    reference = None
    groups = needs.reference_groups
    if groups:
        with torch.no_grad(), original_model(model, frozen_copy) as original:
            reference = _model_pass(original, batch.select(tuple(sorted(groups))) if groups != set(batch.row_group)
                                    else batch, needs.reference_full,
                                    needs.hidden_layer if needs.reference_hidden else None, split_rows)
    return StepOutputs(current, reference)
