"""Plain supervised fine-tuning on answer tokens (used to inject a leak for the demo and the
copyright task: a model must first know something before unlearning can be measured)."""
from __future__ import annotations

import random

import torch

from unlearn.data.encoding import Encoded, pad_rows
from unlearn.ui import progress


def finetune(model, rows: list[Encoded], pad_id: int, *, epochs: int, lr: float = 1e-4, batch_size: int = 16,
             seed: int = 0, bf16: bool = True, description: str = "fine-tuning") -> list[float]:
    """Full fine-tune with AdamW on answer-token NLL; returns the mean loss of each epoch."""
    torch.manual_seed(seed)
    order_rng = random.Random(seed)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    steps = epochs * ((len(rows) + batch_size - 1) // batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 - s / max(steps, 1))
    model.train()
    losses = []
    with progress() as bar:
        task = bar.add_task(description, total=steps, status="")
        for _ in range(epochs):
            order = list(range(len(rows)))
            order_rng.shuffle(order)
            total = 0.0
            for start in range(0, len(order), batch_size):
                batch = pad_rows([rows[i] for i in order[start: start + batch_size]], pad_id)
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
