"""One forward pass over a packed step batch, returning only what the objectives read.

The language-model head runs on answer positions only (prompt and padding positions never reach
the vocabulary projection), and full-vocabulary log-probabilities are kept only for the groups
that an objective needs them for (the KL on normal rows). The reference ("original") model is the
same network with LoRA adapters disabled, or a frozen copy for a full fine-tune.

Two savings, invisible to the objectives (everything comes back in the batch's row order):
- rows with the same prompt (a forget row and its K mismatch rows) run as one sequence, the prompt
  computed once and each answer a block that sees only the prompt and itself (sdpa attention);
- sequences of very different lengths (a long forget answer beside short normal rows) are split
  into a few length buckets, each padded to its own longest sequence, when that saves more padded
  positions than a forward costs.
When an objective reads a layer's output row by row (RMU), the rows run as they are.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from unlearn.data.batches import StepBatch
from unlearn.data.encoding import IGNORE
from unlearn.models.prefix import MIN_SHARED_PREFIX, cache_keyword, can_share, prefix_cache, shared_prefix
from unlearn.models.prepare import original_model, unwrap

# What one extra forward costs, in padded token positions (kernel launches, small matmuls):
# splitting rows into one more length bucket must save more positions than this.
BUCKET_COST_TOKENS = 128


@dataclass
class Needs:
    """What the active objectives read from a forward pass."""

    full_logprobs: set[str] = field(default_factory=set)  # groups needing full-vocab log-probs
    reference_logps: set[str] = field(default_factory=set)  # groups needing reference token log-probs
    reference_full: set[str] = field(default_factory=set)  # groups needing reference full log-probs
    hidden_layers: frozenset[int] = frozenset()  # decoder layers whose outputs an objective reads
    reference_hidden: set[str] = field(default_factory=set)

    def merge(self, other: "Needs") -> "Needs":
        return Needs(self.full_logprobs | other.full_logprobs, self.reference_logps | other.reference_logps,
                     self.reference_full | other.reference_full, self.hidden_layers | other.hidden_layers,
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
    hidden: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (rows, T, D) output of that layer
    attention_mask: torch.Tensor | None = None
    answer_mask: torch.Tensor | None = None  # (rows, T): True at answer tokens (what carries loss)
    targets: torch.Tensor | None = None  # (N,) the label (token id) at each answer position

    def group_positions(self, group: str) -> torch.Tensor:
        """Mask over answer positions: True where the position belongs to a row of `group`."""
        rows = torch.tensor([g == group for g in self.row_group], device=self.position_row.device)
        return rows[self.position_row]

    def token_logps(self, group: str) -> torch.Tensor:
        return self.logps[self.group_positions(group)]

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

    def group_hidden(self, group: str, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A layer's outputs on the rows of `group`, and the rows' attention mask."""
        rows = [i for i, g in enumerate(self.row_group) if g == group]
        return self.hidden[layer][rows], self.attention_mask[rows]

    def group_answer_mask(self, group: str) -> torch.Tensor:
        rows = [i for i, g in enumerate(self.row_group) if g == group]
        return self.answer_mask[rows]


@dataclass
class StepOutputs:
    current: Pass
    reference: Pass | None
    progress: float = 0.0  # share of the training budget done before this step (t / T): for schedules


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


@dataclass
class Packed:
    """Rows that share a prompt, as one sequence: the prompt once, then each row's answer as its
    own block, which sees the prompt and itself (its positions restart where the prompt ends).

    A forget row and its K mismatch rows share the forget prompt, so the prompt is computed once
    instead of K + 1 times. A row that shares nothing is its own sequence, unchanged."""

    ids: list[int]
    prompt: int  # length of the shared prompt
    rows: list[int]  # batch row of each answer block
    starts: list[int]  # where each answer block begins in `ids`

    def place(self, block: int, t: int) -> int:
        """Where token t of the block's original row sits in the packed sequence."""
        return t if t < self.prompt else self.starts[block] + t - self.prompt

    @property
    def positions(self) -> list[int]:
        ends = self.starts[1:] + [len(self.ids)]
        return list(range(self.prompt)) + [self.prompt + i for s, e in zip(self.starts, ends) for i in range(e - s)]


def pack_rows(ids: list[list[int]], labels: list[list[int]], share_prompts: bool) -> list[Packed]:
    """Group rows by identical prompt (everything before the first labelled token)."""
    groups: dict[tuple, Packed] = {}
    packed = []
    for row, (tokens, targets) in enumerate(zip(ids, labels)):
        prompt = next((t for t, label in enumerate(targets) if label != IGNORE), len(tokens))
        key = tuple(tokens[:prompt]) if share_prompts else row
        if key not in groups:
            groups[key] = Packed(list(tokens[:prompt]), prompt, [], [])
            packed.append(groups[key])
        group = groups[key]
        group.rows.append(row)
        group.starts.append(len(group.ids))
        group.ids += tokens[prompt:]
    return packed


@contextlib.contextmanager
def head_on(model, sequence: torch.Tensor, position: torch.Tensor):
    """Feed the LM head only the hidden states at (sequence, position) pairs, inside the model's
    own forward: the head returns (N, V) logits and the (rows, T, V) tensor is never built.
    Hooking the head (instead of calling it on returned hidden states) keeps the computation
    inside forward(), where DDP and FSDP expect every parameter to be used."""
    hook = unwrap(model).get_output_embeddings().register_forward_pre_hook(
        lambda module, args: (args[0][sequence, position],) + tuple(args[1:]))
    try:
        yield
    finally:
        hook.remove()


def opening_cache(model, ids: torch.Tensor, attention_mask: torch.Tensor, rows: int,
                  position_ids: torch.Tensor | None = None):
    """The key/value cache of one row's opening tokens (no LM head), repeated over `rows` rows."""
    nothing = torch.zeros(0, dtype=torch.long, device=ids.device)
    with head_on(model, nothing, nothing):
        cache = prefix_cache(model(input_ids=ids, attention_mask=attention_mask, position_ids=position_ids,
                                   use_cache=True))
    cache.batch_repeat_interleave(rows)
    return cache


def prefix_shared_forward(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, prefix: int,
                          sequence: torch.Tensor, position: torch.Tensor,
                          position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The LM head's logits at (sequence, position), with the rows' common first `prefix` tokens run
    once: one row's prefix builds a key/value cache, repeated over the rows, and the rest of each row
    attends to it. Gradients flow through the cache into the prefix's single computation, so loss and
    gradients equal a plain forward's (up to rounding) at (rows - 1) x prefix fewer positions.
    attention_mask: (rows, T), or a (rows, 1, T, T) mask whose first `prefix` positions are causal."""
    rows, width = input_ids.shape
    if position_ids is None:
        position_ids = torch.arange(width, device=input_ids.device).expand(rows, -1)
    head_mask = attention_mask[:1, :, :prefix, :prefix] if attention_mask.dim() == 4 else attention_mask[:1, :prefix]
    rest_mask = attention_mask[:, :, prefix:, :] if attention_mask.dim() == 4 else attention_mask
    cache = opening_cache(model, input_ids[:1, :prefix], head_mask, rows, position_ids[:1, :prefix])
    with head_on(model, sequence, position - prefix):
        return model(input_ids=input_ids[:, prefix:], attention_mask=rest_mask, position_ids=position_ids[:, prefix:],
                     use_cache=True, **{cache_keyword(model): cache}).logits


def _inputs(group: list[Packed], device) -> dict:
    """Padded ids and, when some sequence holds several answer blocks, explicit positions and a
    (rows, 1, T, T) mask: prompt causal; each block sees the prompt and itself, causally."""
    width = max(len(p.ids) for p in group)
    ids = torch.zeros((len(group), width), dtype=torch.long)  # padding: masked out, any id will do
    for i, p in enumerate(group):
        ids[i, :len(p.ids)] = torch.tensor(p.ids)
    if all(len(p.rows) == 1 for p in group):  # plain rows: the model's own causal mask and positions
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for i, p in enumerate(group):
            mask[i, :len(p.ids)] = 1
        return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    positions = torch.zeros((len(group), width), dtype=torch.long)
    segment = torch.full((len(group), width), -1, dtype=torch.long)  # 0: prompt, b + 1: block b, -1: padding
    for i, p in enumerate(group):
        positions[i, :len(p.ids)] = torch.tensor(p.positions)
        segment[i, :p.prompt] = 0
        for b, start in enumerate(p.starts):
            segment[i, start:(p.starts[b + 1] if b + 1 < len(p.starts) else len(p.ids))] = b + 1
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    query, key = segment[:, :, None], segment[:, None, :]
    mask = causal & (key >= 0) & ((key == 0) | (key == query))
    mask |= torch.eye(width, dtype=torch.bool)  # padding rows see themselves: no empty softmax
    return {"input_ids": ids.to(device), "attention_mask": mask[:, None].to(device),
            "position_ids": positions.to(device)}


def _model_pass(model, batch: StepBatch, full_groups: set[str], hidden_layers: frozenset[int] = frozenset(),
                split_rows: bool = True) -> Pass:
    lengths = batch.attention_mask.sum(1).tolist()  # rows are right-padded
    ids = [row[:n] for row, n in zip(batch.input_ids.tolist(), lengths)]
    labels = [row[:n] for row, n in zip(batch.labels.tolist(), lengths)]
    # a layer's output is read row by row (RMU, rerouting): then the rows run as they are, in one forward
    as_is = bool(hidden_layers)
    # a custom 4D mask needs the sdpa attention (eager wants an additive float mask, flash none)
    share = not as_is and getattr(unwrap(model).config, "_attn_implementation", None) == "sdpa"
    packed = pack_rows(ids, labels, share)
    device = batch.input_ids.device
    split = split_rows and not as_is
    buckets = length_buckets([len(p.ids) for p in packed]) if split else [list(range(len(packed)))]
    logits, targets, rows, order = [], [], [], []
    for bucket in buckets:
        group = [packed[i] for i in bucket]
        where = [(i, p.place(b, t - 1), target, row, t)
                 for i, p in enumerate(group) for b, row in enumerate(p.rows)
                 for t, target in enumerate(labels[row]) if t and target != IGNORE]
        sequence, position, target, row, t = (torch.tensor(column, device=device) for column in zip(*where))
        inputs = ({"input_ids": batch.input_ids, "attention_mask": batch.attention_mask} if as_is
                  else _inputs(group, device))
        # every sequence opens with the same tokens (a chat template's system prompt): run them once.
        # Not where hidden states are read (they would lack the prefix) or forwards must be counted (sharded)
        prefix = 0
        if split and len(group) > 1 and can_share(model):
            valid = torch.tensor([[t < len(p.ids) for t in range(inputs["input_ids"].shape[1])] for p in group],
                                 device=device)
            prefix = shared_prefix(inputs["input_ids"], valid, int(position.min()))
        # the prefix's own forward must save more positions than a forward costs (as a bucket must)
        if prefix >= MIN_SHARED_PREFIX and (len(group) - 1) * prefix > BUCKET_COST_TOKENS:
            logits.append(prefix_shared_forward(model, inputs["input_ids"], inputs["attention_mask"], prefix,
                                                sequence, position, inputs.get("position_ids")))
        else:
            with head_on(model, sequence, position):
                outputs = model(**inputs, use_cache=False, output_hidden_states=as_is)
            logits.append(outputs.logits)
        targets.append(target)
        rows.append(row)
        order.append(row * (batch.input_ids.shape[1] + 1) + t)
    logits, targets, row_index, order = (torch.cat(x) for x in (logits, targets, rows, order))
    order = order.argsort()  # row-major, as in the batch: current and reference passes must align
    logits, targets, row_index = logits[order], targets[order], row_index[order]
    logits = logits.float()
    logps = -F.cross_entropy(logits, targets, reduction="none")  # no (N, V) log-softmax kept
    full = {}
    for group in full_groups:
        in_group = torch.tensor([g == group for g in batch.row_group], device=device)
        full[group] = F.log_softmax(logits[in_group[row_index]], dim=-1)
    hidden = {layer: outputs.hidden_states[layer + 1] for layer in hidden_layers}
    return Pass(logps, row_index, list(batch.row_group), full, hidden, batch.attention_mask, batch.labels != IGNORE,
                targets)


def step_forward(model, batch: StepBatch, needs: Needs, frozen_copy=None, split_rows: bool = True,
                 progress: float = 0.0) -> StepOutputs:
    """split_rows=False: one forward per pass (sharded models need the same number of forwards,
    each a collective, on every process)."""
    current = _model_pass(model, batch, needs.full_logprobs, needs.hidden_layers, split_rows)
    reference = None
    groups = needs.reference_groups
    if groups:
        with torch.no_grad(), original_model(model, frozen_copy) as original:
            reference = _model_pass(original, batch.select(tuple(sorted(groups))) if groups != set(batch.row_group)
                                    else batch, needs.reference_full,
                                    needs.hidden_layers if needs.reference_hidden else frozenset(), split_rows)
    return StepOutputs(current, reference, progress)
