"""Plain supervised fine-tuning on answer tokens (used to inject a leak for the demo and the
copyright task: a model must first know something before unlearning can be measured).

Two savings against `model(**batch).loss` (the same loss, up to rounding): the LM head and the
log-softmax run on answer positions only (prompt and padding positions never reach the
vocabulary), and with `bf16` the weights the matmuls read are bfloat16 while AdamW updates float32
master copies (the model ends in float32, holding the masters)."""
from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from unlearn.data.encoding import IGNORE, Encoded, pad_rows
from unlearn.models.precision import native_bf16
from unlearn.models.prefix import MIN_SHARED_PREFIX, can_share, shared_prefix
from unlearn.objectives.forward import BUCKET_COST_TOKENS, head_on, prefix_shared_forward
from unlearn.training.loop import adamw
from unlearn.ui import progress


class MasterWeights:
    """bfloat16 weights in the model, float32 masters for the optimizer: gradients are copied to the
    masters before the step, the stepped masters rounded back into the model after it."""

    def __init__(self, params: list[torch.nn.Parameter]):
        self.params = params
        self.masters = [p.detach().float().clone().requires_grad_(True) for p in params]
        for p in params:
            p.data = p.data.to(torch.bfloat16)

    def gradients_to_masters(self) -> None:
        for p, m in zip(self.params, self.masters):
            m.grad = None if p.grad is None else p.grad.float()
            p.grad = None

    def masters_to_model(self) -> None:
        with torch.no_grad():
            for p, m in zip(self.params, self.masters):
                p.copy_(m)

    def restore_float32(self, model) -> None:
        """The model back in float32, holding the masters exactly (buffers cast too)."""
        model.float()
        with torch.no_grad():
            for p, m in zip(self.params, self.masters):
                p.copy_(m)


def answer_loss(model, batch: dict[str, torch.Tensor], share_prefix: bool = True) -> torch.Tensor:
    """Mean NLL of the answer tokens (labels != IGNORE, shifted by one), the head fed only their
    positions: equal to the model's own `labels=` loss. share_prefix: the rows' common leading
    tokens (a chat template's system prompt: 40% of a short record's positions) run once."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    targets = batch["labels"][:, 1:]
    sequence, position = (targets != IGNORE).nonzero(as_tuple=True)
    share = share_prefix and len(ids) > 1 and can_share(model)
    prefix = shared_prefix(ids, mask, int(position.min())) if share else 0
    if prefix >= MIN_SHARED_PREFIX and (len(ids) - 1) * prefix > BUCKET_COST_TOKENS:
        logits = prefix_shared_forward(model, ids, mask, prefix, sequence, position)
    else:
        with head_on(model, sequence, position):
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    return F.cross_entropy(logits.float(), targets[sequence, position])


def finetune(model, rows: list[Encoded], pad_id: int, *, epochs: int, lr: float = 1e-4, batch_size: int = 16,
             seed: int = 0, bf16: bool | None = None, share_prefix: bool = True,
             description: str = "fine-tuning") -> list[float]:
    """Full fine-tune with AdamW on answer-token NLL; returns the mean loss of each epoch.
    bf16: bfloat16 weights in the forward and backward, float32 masters in AdamW (CPU and CUDA);
    None: where the device multiplies bf16 natively (elsewhere float32 is faster).
    share_prefix: each batch's common opening tokens run once (`answer_loss`)."""
    if bf16 is None:
        bf16 = native_bf16()
    torch.manual_seed(seed)
    order_rng = random.Random(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    masters = MasterWeights(params) if bf16 else None
    optimizer = adamw(masters.masters if masters else params, lr)
    stepped = masters.masters if masters else params
    steps = epochs * ((len(rows) + batch_size - 1) // batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 - s / max(steps, 1))
    model.train()
    losses = []
    device = next(model.parameters()).device
    try:
        with progress() as bar:
            task = bar.add_task(description, total=steps, status="")
            for _ in range(epochs):
                total = 0.0
                for indices in epoch_batches(rows, batch_size, order_rng):
                    batch = {k: v.to(device) for k, v in pad_rows([rows[i] for i in indices], pad_id).items()}
                    loss = answer_loss(model, batch, share_prefix)
                    loss.backward()
                    if masters:
                        masters.gradients_to_masters()
                    torch.nn.utils.clip_grad_norm_(stepped, 1.0)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    if masters:
                        masters.masters_to_model()
                    total += loss.item() * len(indices)
                    bar.update(task, advance=1, status=f"loss {loss.item():.3f}")
                losses.append(total / len(rows))
    finally:
        if masters:
            masters.restore_float32(model)
    model.eval()
    return losses


def epoch_batches(rows: list[Encoded], batch_size: int, rng: random.Random, group: int = 8) -> list[list[int]]:
    """One epoch's batches: a shuffle, then rows of similar length batched together within each
    window of `group` batches (short records are not padded to a long answer's length), and the
    batches shuffled again so that lengths do not come in order."""
    order = list(range(len(rows)))
    rng.shuffle(order)
    window = batch_size * group
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start: start + window], key=lambda i: len(rows[i].input_ids))
        batches += [chunk[i: i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches
