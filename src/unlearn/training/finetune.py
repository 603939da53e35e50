"""Plain supervised fine-tuning on answer tokens (used to inject a leak for the demo and the
copyright task: a model must first know something before unlearning can be measured)."""
from __future__ import annotations

import random

import torch

from unlearn.data.encoding import Encoded, pad_rows
from unlearn.training.loop import adamw
from unlearn.ui import progress


def finetune(model, rows: list[Encoded], pad_id: int, *, epochs: int, lr: float = 1e-4, batch_size: int = 16,
             seed: int = 0, bf16: bool = True, description: str = "fine-tuning") -> list[float]:
    """Full fine-tune with AdamW on answer-token NLL; returns the mean loss of each epoch."""
    torch.manual_seed(seed)
    order_rng = random.Random(seed)
    optimizer = adamw([p for p in model.parameters() if p.requires_grad], lr)
    steps = epochs * ((len(rows) + batch_size - 1) // batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 - s / max(steps, 1))
    model.train()
    losses = []
    with progress() as bar:
        task = bar.add_task(description, total=steps, status="")
        for _ in range(epochs):
            total = 0.0
            for indices in epoch_batches(rows, batch_size, order_rng):
                batch = pad_rows([rows[i] for i in indices], pad_id)
                with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=bf16):
                    loss = model(**batch).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                total += loss.item() * len(batch["input_ids"])
                bar.update(task, advance=1, status=f"loss {loss.item():.3f}")
            losses.append(total / len(rows))
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
