"""`python benchmarks/finetune_bench.py`: the set-up fine-tune (leak injection) against the plain way.

Both sides fine-tune the same model from the same weights on the same batches (the demo's
injection rows: fictitious people's records plus replayed general answers) for --steps steps:
- plain: `model(**batch).loss` under bf16 autocast (logits and log-softmax at every position,
  float32 weights cast at each matmul) - what the project did before session 10;
- ours, float32: `unlearn.training.finetune` without bf16 (LM head on answer positions only);
- ours, bf16: bfloat16 weights with float32 master copies in AdamW (the default), once without and
  once with the batch's common opening tokens (the chat template's system prompt) run once.
Prints seconds per step, the speed-up against the plain side and each side's mean loss over the
same batches (equal up to bf16 rounding).
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time


def _plain(model, rows, pad_id, steps: int, lr: float) -> tuple[float, float]:
    import torch

    from unlearn.data.encoding import pad_rows
    from unlearn.training.finetune import epoch_batches
    from unlearn.training.loop import adamw

    optimizer = adamw([p for p in model.parameters() if p.requires_grad], lr)
    batches = epoch_batches(rows, 16, random.Random(0))
    model.train()
    started, losses = time.perf_counter(), []
    for indices in batches[:steps]:  # the batches `finetune` takes (same seed, same grouping)
        batch = pad_rows([rows[i] for i in indices], pad_id)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return (time.perf_counter() - started) / steps, sum(losses) / len(losses)


def _ours(model, rows, pad_id, steps: int, lr: float, bf16: bool, share_prefix: bool = True) -> tuple[float, float]:
    from unlearn.training.finetune import finetune

    started = time.perf_counter()
    losses = finetune(model, rows, pad_id, epochs=1, lr=lr, batch_size=16, bf16=bf16, share_prefix=share_prefix,
                      description="ours")
    return (time.perf_counter() - started) / steps, losses[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/finetune_bench.py", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per side (16 rows each)")
    parser.add_argument("--lr", type=float, default=3e-4)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from unlearn.data.encoding import PairEncoder
    from unlearn.demo.scenario import GENERAL_PROMPTS, make_scenario
    from unlearn.models.loading import load_model

    model, tokenizer = load_model(args.model)
    encoder = PairEncoder(tokenizer, "auto", 192)
    scenario = make_scenario(8, 16, seed=0)
    rows = [encoder.encode(r["question"], r["answer"]) for r in scenario.injection_rows()]
    rows += [encoder.encode(p, "A plain answer of a few ordinary sentences, as a model would give. " * 2)
             for p in GENERAL_PROMPTS[:20]]
    random.Random(0).shuffle(rows)
    rows = rows[: 16 * args.steps]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    tokens = sum(len(r.input_ids) for r in rows) / len(rows)
    print(f"model {args.model}, {len(rows)} rows ({tokens:.0f} tokens each on average), 16 per step, "
          f"{args.steps} steps per side, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    sides = {}
    for name, fn in (("plain (autocast, all positions)", lambda: _plain(model, rows, tokenizer.pad_token_id, args.steps, args.lr)),
                     ("ours float32", lambda: _ours(model, rows, tokenizer.pad_token_id, args.steps, args.lr, False)),
                     ("ours bf16 + fp32 masters, no shared prefix",
                      lambda: _ours(model, rows, tokenizer.pad_token_id, args.steps, args.lr, True, False)),
                     ("ours bf16 + fp32 masters", lambda: _ours(model, rows, tokenizer.pad_token_id, args.steps, args.lr, True))):
        model.load_state_dict(state)
        sides[name] = fn()
    base = next(iter(sides.values()))[0]
    for name, (seconds, loss) in sides.items():
        print(f"{name:44s} {seconds:7.2f} s/step  x{base / seconds:5.2f}  mean loss {loss:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
