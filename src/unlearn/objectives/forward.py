"""One forward pass over a packed step batch, returning only what the objectives read.

The language-model head runs on answer positions only (prompt and padding positions never reach
the vocabulary projection), and full-vocabulary log-probabilities are kept only for the groups
that an objective needs them for (the KL on normal rows). The reference ("original") model is the
same network with LoRA adapters disabled, or a frozen copy for a full fine-tune.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from unlearn.data.batches import StepBatch


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

    logps: torch.Tensor  # (N,) log p(label) at each answer position
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


def _model_pass(model, batch: StepBatch, full_groups: set[str], hidden_layer: int | None) -> Pass:
    outputs = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                    output_hidden_states=True, logits_to_keep=1, use_cache=False)
    final_hidden = outputs.hidden_states[-1]  # input of the LM head (after the final norm)
    # position t predicts token t+1: shift labels left
    targets = batch.labels[:, 1:]
    answer = targets != -100
    row_index, position = answer.nonzero(as_tuple=True)
    head = model.get_output_embeddings()
    logits = head(final_hidden[:, :-1][answer]).float()
    logps = -F.cross_entropy(logits, targets[answer], reduction="none")  # no (N, V) log-softmax kept
    full = {}
    for group in full_groups:
        rows = torch.tensor([g == group for g in batch.row_group], device=row_index.device)
        full[group] = F.log_softmax(logits[rows[row_index]], dim=-1)
    hidden = outputs.hidden_states[hidden_layer + 1] if hidden_layer is not None else None
    return Pass(logps, row_index, list(batch.row_group), full, hidden, batch.attention_mask)


@contextlib.contextmanager
def original_model(model, frozen_copy):
    """The model before unlearning: adapters off (LoRA) or the frozen copy (full fine-tune)."""
    if frozen_copy is not None:
        yield frozen_copy
    else:
        with unwrap(model).disable_adapter():
            yield model


def unwrap(model):
    return model.module if hasattr(model, "module") and not hasattr(model, "disable_adapter") else model


def step_forward(model, batch: StepBatch, needs: Needs, frozen_copy=None) -> StepOutputs:
    current = _model_pass(model, batch, needs.full_logprobs, needs.hidden_layer)
    reference = None
    groups = needs.reference_groups
    if groups:
        with torch.no_grad(), original_model(model, frozen_copy) as original:
            reference = _model_pass(original, batch.select(tuple(sorted(groups))) if groups != set(batch.row_group)
                                    else batch, needs.reference_full,
                                    needs.hidden_layer if needs.reference_hidden else None)
    return StepOutputs(current, reference)
