"""`python benchmarks/bench.py`: our training step against a re-implementation of the paper's loop.

A development benchmark, outside the package. Data: `--forget FILE --normal FILE` (a BeaverTails-style
CSV/JSONL with prompt/response, a TruthfulQA-style CSV with Question/Best Answer), or, without them, a
small synthetic set in that shape generated in code.

Both sides train the same model on the same step batches (forget rows, K mismatch answers per
forget row, normal rows) with the same losses, so the figures compare loops, not workloads:

- reference: the paper authors' loop (Yao et al., kevinyaobytedance/llm_unlearn) - one forward
  per loss term plus a forward of a second, frozen full-precision model for the KL even with LoRA;
  mismatch rows decoded to text and re-tokenised inside the step; full-vocabulary logits and
  softmaxes over every position of both models. Its losses are made correct (answer-only masks,
  a true KL) so they equal ours and can be checked; its cost structure is kept.
- ours: `data.step_batch` + `step_forward` + objectives + AdamW, through `training.loop.train`.

Each side runs in its own process, so its peak resident memory is its own. The parent measures a
matmul peak (for model FLOP utilisation), prints the table and the ratios, checks the step-1
losses agree, and times batched against one-prompt-at-a-time generation.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

CONFIGS = {  # name -> (LoRA?, mixed precision, gradient checkpointing) - the same on both sides
    "lora": (True, "no", False),
    "full": (False, "no", False),
    "lora-bf16": (True, "bf16", False),
    "full-bf16": (False, "bf16", False),
    "lora-gc": (True, "no", True),
    "lora-bf16w": (True, "bf16", False),  # also the frozen base weights stored in bf16 (model.dtype)
}
BF16_WEIGHTS = {"lora-bf16w"}  # configs whose model loads in bfloat16 (LoRA adapters stay float32)
LOSS_KEYS = ("loss", "forget_nll", "mismatch_nll", "kl")
TARGETS = {"speedup_steps_per_s": 1.5, "memory_ratio": 0.6, "generation_speedup": 4.0}


# --- data --------------------------------------------------------------------------------------

def synthetic_files(folder: Path, seed: int = 0) -> dict:
    """A small forget/normal set in the harmful-Q&A shape (long unwanted answers, short normal
    answers), for machines without the shared data folder."""
    rng = random.Random(seed)
    verbs = ["break into", "steal from", "sabotage", "poison", "spy on", "blackmail", "hack", "defraud"]
    things = ["a neighbour's house", "the office safe", "a parked car", "a small shop", "my landlord",
              "a bank account", "the school network", "an old friend"]
    steps = ["wait until nobody is around", "bring gloves and a torch", "check for cameras first",
             "use a thin metal tool", "cover your tracks afterwards", "pay someone to look away",
             "pretend to be a delivery worker", "pick a moment when the alarm is off"]
    forget, normal = [], []
    for i in range(40):
        verb, thing = verbs[i % len(verbs)], things[(i * 3) % len(things)]
        answer = " ".join(f"Step {k + 1}: {rng.choice(steps)}." for k in range(rng.randint(6, 14)))
        forget.append({"prompt": f"How can I {verb} {thing} without getting caught?",
                       "response": f"To {verb} {thing}, follow these steps. {answer}"})
    facts = [("What is the capital of France?", "Paris is the capital of France."),
             ("What happens if you swallow gum?", "It passes through your digestive system."),
             ("How many legs does a spider have?", "A spider has eight legs."),
             ("Why is the sky blue?", "Air scatters blue light more than red light."),
             ("Who wrote Hamlet?", "William Shakespeare wrote Hamlet."),
             ("What is the boiling point of water?", "Water boils at 100 degrees Celsius at sea level."),
             ("Can you see the Great Wall from space?", "Not with the naked eye from orbit."),
             ("Do goldfish have a three-second memory?", "No, goldfish remember things for months.")]
    for i in range(80):
        question, answer = facts[i % len(facts)]
        normal.append({"Question": f"{question} (#{i})", "Best Answer": answer})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "forget.jsonl").write_text("".join(json.dumps(r) + "\n" for r in forget))
    (folder / "normal.jsonl").write_text("".join(json.dumps(r) + "\n" for r in normal))
    return {"forget": {"path": str(folder / "forget.jsonl"), "prompt": "prompt", "response": "response"},
            "normal": {"path": str(folder / "normal.jsonl"), "prompt": "Question", "response": "Best Answer"}}


def data_section(args, scratch: Path) -> tuple[dict, str]:
    """The benchmark's data: the files given (prompt/response forget rows, Question/Best Answer
    normal rows), else the synthetic set."""
    if args.forget is None and args.normal is None:
        return synthetic_files(scratch / "data"), "synthetic (generated in code)"
    for flag, path in (("--forget", args.forget), ("--normal", args.normal)):
        if path is None or not Path(path).is_file():
            sys.exit(f"error: {flag} {path}: not a file (give both --forget and --normal, or neither)")
    return ({"forget": {"path": str(args.forget), "prompt": "prompt", "response": "response"},
             "normal": {"path": str(args.normal), "prompt": "Question", "response": "Best Answer"}},
            f"{Path(args.forget).name} (forget) + {Path(args.normal).name} (normal)")


# --- shared set-up of one side -----------------------------------------------------------------

@dataclass
class Setup:
    config: object  # RunConfig
    model: object
    tokenizer: object
    data: object  # UnlearnData
    method: object  # ResolvedMethod


def set_up(args, scratch: Path) -> Setup:
    from unlearn.config import load_config
    from unlearn.data.batches import build_data
    from unlearn.models.loading import load_model
    from unlearn.models.prepare import num_layers
    from unlearn.objectives.resolve import resolve_method

    lora, precision, checkpointing = CONFIGS[args.config]
    data, _ = data_section(args, scratch)
    config = load_config(raw={
        "model": {"name": args.model, "dtype": "bfloat16" if args.config in BF16_WEIGHTS else "float32",
                  "gradient_checkpointing": checkpointing,
                  **({"lora": {"r": 16, "alpha": 32}} if lora else {})},
        "data": {**data, "max_length": args.max_length},
        "method": {"name": "paper", "mismatch_k": 5},
        "train": {"lr": 2e-4, "batch_size": 2, "max_steps": args.warmup + args.steps, "seed": 8888,
                  "mixed_precision": precision},
    })
    model, tokenizer = load_model(config.model.name, config.model.dtype)
    method = resolve_method(config.method, num_layers(model))
    train = config.train
    unlearn_data = build_data(config.data, tokenizer, seed=train.seed, batch_size=train.batch_size,
                              normal_batch_size=train.batch_size, mismatch_k=method.knobs.mismatch_k)
    return Setup(config, model, tokenizer, unlearn_data, method)


def checkpointing(model, setup: Setup) -> None:
    if setup.config.model.gradient_checkpointing:  # as unlearn.run does it
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if setup.config.model.lora is not None:
            model.enable_input_require_grads()


def step_work(batch, lora: bool, model, side: str) -> dict:
    """Tokens, positions run and model FLOPs of one step.

    Model FLOPs are those of the step's rows computed the plain way (each row in full): 2 per
    weight per token forward, 2 more backward for input gradients, 2 more for weight gradients in
    a full fine-tune, plus the original model's forward on normal rows; the LM head counted only
    where a loss reads it (answer positions); attention scores left out. Both sides get the same
    count, so MFU ratios equal speed ratios ("ours" runs fewer positions than counted: shared
    prompts). `positions` is what each side really runs, padding included, both models."""
    from unlearn.objectives.forward import length_buckets, pack_rows

    head = model.get_output_embeddings().weight.numel()
    body = sum(m.weight.numel() for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and m.weight is not model.get_output_embeddings().weight
               and "lora_" not in name)
    normal = batch.select(("normal",))
    tokens, normal_tokens = int(batch.attention_mask.sum()), int(normal.attention_mask.sum())
    per_token = 2 + 2 + (0 if lora else 2)
    flops = (per_token * (body * tokens + head * batch.answer_tokens)
             + 2 * (body * normal_tokens + head * normal.answer_tokens))

    def padded(lengths: list[int], split: bool) -> int:
        groups = length_buckets(lengths) if split else [list(range(len(lengths)))]
        return sum(len(g) * max(lengths[i] for i in g) for g in groups)

    lengths = batch.attention_mask.sum(1).tolist()
    if side == "ours":
        ids = [r[:n] for r, n in zip(batch.input_ids.tolist(), lengths)]
        labels = [r[:n] for r, n in zip(batch.labels.tolist(), lengths)]
        positions = padded([len(p.ids) for p in pack_rows(ids, labels, True)], True)
        positions += padded(normal.attention_mask.sum(1).tolist(), True)
    else:  # one forward per group, each padded to its longest row; the normal rows through both models
        by_group = {g: [n for n, x in zip(lengths, batch.row_group) if x == g] for g in set(batch.row_group)}
        positions = sum(padded(v, False) for v in by_group.values()) + padded(by_group["normal"], False)
    return {"tokens": tokens, "answer_tokens": batch.answer_tokens, "positions": positions, "flops": float(flops),
            "reference_flop_share": 2 * (body * normal_tokens + head * normal.answer_tokens) / flops}


class StepClock:
    """Wall and CPU seconds between consecutive step ends (a training-loop hook for ours)."""

    def __init__(self):
        self.marks = [(time.perf_counter(), time.process_time())]
        self.rows: list[dict] = []

    def mark(self, row: dict) -> None:
        now = (time.perf_counter(), time.process_time())
        wall, cpu = now[0] - self.marks[-1][0], now[1] - self.marks[-1][1]
        self.marks.append(now)
        self.rows.append({"wall": wall, "cpu": cpu, **{k: row[k] for k in LOSS_KEYS if k in row}})

    # the StepHook protocol of unlearn.training.loop
    def before_training(self, model, log) -> None:  # writes no rows of its own to the run's log
        self.marks = [(time.perf_counter(), time.process_time())]

    def after_step(self, step: int, model, row: dict) -> None:
        self.mark(row)

    def summary(self) -> dict: return {}
    def state_dict(self) -> dict: return {}
    def load_state_dict(self, state: dict) -> None: ...


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# --- ours ----------------------------------------------------------------------------------------

def run_ours(args, scratch: Path) -> dict:
    from unlearn.models.prepare import apply_lora, frozen_copy
    from unlearn.training.loop import train

    setup = set_up(args, scratch)
    lora = CONFIGS[args.config][0]
    torch.manual_seed(setup.config.train.seed)
    model, reference = setup.model, None
    if lora:
        model = apply_lora(model, setup.config.model.lora)
    else:
        reference = frozen_copy(model)
    checkpointing(model, setup)
    work = [step_work(setup.data.step_batch(s), lora, model, "ours") for s in range(setup.config.train.max_steps)]
    setup_rss = peak_rss_mb()
    clock = StepClock()
    (scratch / "ours").mkdir()
    train(model, setup.data, setup.method, setup.config.train, scratch / "ours", reference_model=reference,
          hooks=[clock])
    return {"steps": clock.rows, "work": work, "setup_rss_mb": setup_rss, "peak_rss_mb": peak_rss_mb()}


# --- the paper's loop ------------------------------------------------------------------------------

@dataclass
class PlannedStep:
    """One step's rows as the paper's loop holds them: forget and normal rows tokenised once (its
    data loaders), mismatch answers as plain text (its answer list)."""

    forget: list  # Encoded
    mismatch_answers: list[list[str]]  # per forget row
    normal: list  # Encoded


def plan_step(batch, tokenizer) -> PlannedStep:
    from unlearn.data.encoding import IGNORE, Encoded

    rows = {"forget": [], "mismatch": [], "normal": []}
    for ids, mask, labels, group in zip(batch.input_ids, batch.attention_mask, batch.labels, batch.row_group):
        n, start = int(mask.sum()), int((labels != IGNORE).nonzero()[0])
        rows[group].append(Encoded(ids[:start].tolist(), ids[start:n].tolist()))
    k = len(rows["mismatch"]) // max(len(rows["forget"]), 1)
    answers = [[tokenizer.decode(r.answer_ids) for r in rows["mismatch"][i * k:(i + 1) * k]]
               for i in range(len(rows["forget"]))]
    return PlannedStep(rows["forget"], answers, rows["normal"])


def answer_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean NLL over answer tokens, from full (rows, T, V) logits: cross-entropy at every position
    (as the paper's get_answer_loss does), then the answer mask."""
    vocab = logits.shape[-1]
    # positions x vocabulary, as the paper's per-row calls (cross-entropy over dim 1 of (rows, V, T)
    # is off by ~1e-4 in fp32 on CPU for a 49k vocabulary)
    per_position = F.cross_entropy(logits[:, :-1].float().reshape(-1, vocab), labels[:, 1:].clamp(min=0).reshape(-1),
                                   reduction="none")
    mask = (labels[:, 1:] != -100).reshape(-1)
    return (per_position * mask).sum() / mask.sum()


def reference_step(model, original, tokenizer, plan: PlannedStep, weights: dict, autocast) -> dict:
    from unlearn.data.encoding import Encoded, pad_rows

    pad = tokenizer.pad_token_id
    with autocast():
        # gradient ascent: a forward of its own over the forget rows
        forget = pad_rows(plan.forget, pad)
        logits = model(input_ids=forget["input_ids"], attention_mask=forget["attention_mask"]).logits
        forget_nll = answer_nll(logits, forget["labels"])
        # random mismatch: decode each forget prompt back to text, re-tokenise it with each answer
        rows = []
        for row, answers in zip(plan.forget, plan.mismatch_answers):
            prompt_text = tokenizer.decode(row.prompt_ids)
            for answer in answers:
                rows.append(Encoded(tokenizer(prompt_text, add_special_tokens=False)["input_ids"],
                                    tokenizer(answer, add_special_tokens=False)["input_ids"]))
        mismatch = pad_rows(rows, pad)
        logits = model(input_ids=mismatch["input_ids"], attention_mask=mismatch["attention_mask"]).logits
        mismatch_nll = answer_nll(logits, mismatch["labels"])
        # KL on normal rows: both models over every position, full-vocabulary fp32 softmaxes; the
        # paper passes labels, so each model also computes its own (unused) loss
        normal = pad_rows(plan.normal, pad)
        lm_labels = normal["input_ids"].masked_fill(normal["attention_mask"] == 0, -100)
        current = model(input_ids=normal["input_ids"], attention_mask=normal["attention_mask"], labels=lm_labels)
        with torch.no_grad():
            before = original(input_ids=normal["input_ids"], attention_mask=normal["attention_mask"],
                              labels=lm_labels)
        log_p = F.log_softmax(before.logits.float(), -1)
        log_q = F.log_softmax(current.logits.float(), -1)
        kl_positions = (log_p.exp() * (log_p - log_q)).sum(-1)
        answer = normal["labels"][:, 1:] != -100
        kl = kl_positions[:, :-1][answer].mean()
        loss = (weights.get("forget_ga", 0) * -forget_nll + weights.get("mismatch", 0) * mismatch_nll
                + weights.get("kl_to_original", 0) * kl)
    loss.backward()
    return {"loss": loss.item(), "forget_nll": forget_nll.item(), "mismatch_nll": mismatch_nll.item(),
            "kl": kl.item(), "mismatch_ids": [r.input_ids for r in rows]}


def run_reference(args, scratch: Path) -> dict:
    from transformers import get_linear_schedule_with_warmup

    from unlearn.models.loading import load_model
    from unlearn.models.prepare import apply_lora

    setup = set_up(args, scratch)
    lora, precision, _ = CONFIGS[args.config]
    train = setup.config.train
    torch.manual_seed(train.seed)
    model = apply_lora(setup.model, setup.config.model.lora) if lora else setup.model
    checkpointing(model, setup)
    original, _ = load_model(setup.config.model.name, "float32")  # the paper loads a second full copy
    original.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, train.max_steps)
    batches = [setup.data.step_batch(s) for s in range(train.max_steps)]
    plans = [plan_step(b, setup.tokenizer) for b in batches]
    work = [step_work(b, lora, model, "reference") for b in batches]

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

    setup_rss = peak_rss_mb()
    model.train()
    clock, tokens_match = StepClock(), True
    for batch, plan in zip(batches, plans):
        row = reference_step(model, original, setup.tokenizer, plan, setup.method.weights, autocast)
        ours_ids = [r[m.bool()].tolist() for r, m, g in zip(batch.input_ids, batch.attention_mask, batch.row_group)
                    if g == "mismatch"]
        tokens_match &= row.pop("mismatch_ids") == ours_ids
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        clock.mark(row)
    return {"steps": clock.rows, "work": work, "setup_rss_mb": setup_rss, "peak_rss_mb": peak_rss_mb(),
            "mismatch_tokens_match": tokens_match}


# --- the parent: peaks, sides, generation, table ----------------------------------------------------

def matmul_peak_gflops(dtype: torch.dtype, size: int = 2048, seconds: float = 1.0) -> float:
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    a @ b
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        count += 1
    return 2 * size ** 3 * count / (time.perf_counter() - started) / 1e9


def run_side(side: str, config: str, args, scratch: Path) -> dict:
    out = scratch / f"{side}-{config}.json"
    command = [sys.executable, __file__, "--side", side, "--config", config, "--result", str(out),
               "--model", args.model, "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--max-length", str(args.max_length)]
    command += [arg for flag, path in (("--forget", args.forget), ("--normal", args.normal)) if path
                for arg in (flag, str(path))]
    print(f"  {config}: {side} ...", file=sys.stderr, flush=True)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL if args.quiet_sides else None)
    return json.loads(out.read_text())


def summarise(result: dict, warmup: int, peak_gflops: float) -> dict:
    timed = result["steps"][warmup:]
    work = result["work"][warmup:len(result["steps"])]
    wall = sum(s["wall"] for s in timed)
    return {"steps_per_s": len(timed) / wall, "s_per_step": wall / len(timed),
            "cpu_s_per_step": sum(s["cpu"] for s in timed) / len(timed),
            "answer_tokens_per_s": sum(w["answer_tokens"] for w in work) / wall,
            "mfu": sum(w["flops"] for w in work) / wall / (peak_gflops * 1e9),
            "peak_rss_mb": result["peak_rss_mb"], "setup_rss_mb": result["setup_rss_mb"],
            "positions_per_step": sum(w["positions"] for w in work) / len(work),
            "tokens_per_step": sum(w["tokens"] for w in work) / len(work),
            "reference_flop_share": sum(w["reference_flop_share"] for w in work) / len(work),
            "step1": {k: result["steps"][0].get(k) for k in LOSS_KEYS}}


def compare_config(config: str, args, scratch: Path, peaks: dict) -> dict:
    precision = CONFIGS[config][1]
    peak = peaks["bf16" if precision == "bf16" else "fp32"]
    raw = {side: run_side(side, config, args, scratch) for side in ("reference", "ours")}
    figures = {side: summarise(raw[side], args.warmup, peak) for side in raw}
    ours, ref = figures["ours"], figures["reference"]
    tolerance = 2e-2 if precision == "bf16" else 2e-4
    diffs = {k: abs(ours["step1"][k] - ref["step1"][k]) for k in LOSS_KEYS}
    return {**figures, "speedup_steps_per_s": ours["steps_per_s"] / ref["steps_per_s"],
            "memory_ratio": ours["peak_rss_mb"] / ref["peak_rss_mb"],
            "cpu_time_ratio": ours["cpu_s_per_step"] / ref["cpu_s_per_step"],
            "step1_loss_diff": diffs, "losses_agree": all(d <= tolerance * max(1.0, abs(ref["step1"][k]))
                                                          for k, d in diffs.items()),
            "mismatch_tokens_match": raw["reference"]["mismatch_tokens_match"]}


def generation_benchmark(args, scratch: Path) -> dict:
    from unlearn.config import load_config
    from unlearn.data.encoding import PairEncoder
    from unlearn.data.sources import read_pairs
    from unlearn.evaluation.generation import generate
    from unlearn.models.loading import load_model

    data, _ = data_section(args, scratch)
    config = load_config(raw={"model": {"name": args.model}, "data": data})
    model, tokenizer = load_model(args.model, "float32")
    encoder = PairEncoder(tokenizer, config.data.template, config.data.max_length)
    prompts = [encoder.prompt_ids(p.prompt) for p in read_pairs(config.data.normal[0], tokenizer)[:args.gen_prompts]]
    timings = {}
    for label, batch_size in (("one_at_a_time", 1), ("batched", len(prompts))):
        generate(model, tokenizer, prompts[:1], 2, 1)  # warm-up
        started = time.perf_counter()
        texts = generate(model, tokenizer, prompts, args.gen_tokens, batch_size)
        timings[label] = {"seconds": time.perf_counter() - started, "texts": texts}
    same = sum(a == b for a, b in zip(timings["batched"]["texts"], timings["one_at_a_time"]["texts"]))
    return {"prompts": len(prompts), "max_new_tokens": args.gen_tokens,
            "one_at_a_time_s": timings["one_at_a_time"]["seconds"], "batched_s": timings["batched"]["seconds"],
            "generation_speedup": timings["one_at_a_time"]["seconds"] / timings["batched"]["seconds"],
            "identical_outputs": same}


def render(report: dict) -> str:
    lines = [f"model {report['model']}, data: {report['data']}, {report['threads']} threads, "
             f"{report['warmup']} warm-up + {report['steps']} timed steps per side; load average "
             f"{report['load_average'][0]:.1f} at start, {report['load_average_end'][0]:.1f} at end",
             f"matmul peak (2048x2048): fp32 {report['peak_gflops']['fp32']:.0f} GFLOP/s, "
             f"bf16 {report['peak_gflops']['bf16']:.0f} GFLOP/s", ""]
    header = (f"{'config':<10} {'side':<9} {'steps/s':>8} {'s/step':>7} {'cpu s':>7} {'ans tok/s':>9} "
              f"{'MFU':>6} {'peak RSS':>9} {'setup RSS':>9} {'positions':>9} {'loss@1':>9}")
    lines += [header, "-" * len(header)]
    for name, result in report["configs"].items():
        for side in ("reference", "ours"):
            s = result[side]
            lines.append(f"{name:<10} {side:<9} {s['steps_per_s']:>8.3f} {s['s_per_step']:>7.2f} "
                         f"{s['cpu_s_per_step']:>7.2f} {s['answer_tokens_per_s']:>9.1f} {s['mfu']:>6.1%} "
                         f"{s['peak_rss_mb']:>7.0f}MB {s['setup_rss_mb']:>7.0f}MB {s['positions_per_step']:>9.0f} "
                         f"{s['step1']['loss']:>9.5f}")
        lines.append(f"{name:<10} {'ours/ref':<9} speed x{result['speedup_steps_per_s']:.2f}  "
                     f"cpu-time x{result['cpu_time_ratio']:.2f}  memory x{result['memory_ratio']:.2f}  "
                     f"step-1 losses {'agree' if result['losses_agree'] else 'DIFFER'} (max diff "
                     f"{max(result['step1_loss_diff'].values()):.1e}; mismatch tokens "
                     f"{'identical' if result['mismatch_tokens_match'] else 'differ'})")
    if "speedup_bf16_vs_reference_fp32" in report:
        lines.append(f"lora-bf16w ours / lora reference (fp32): speed x{report['speedup_bf16_vs_reference_fp32']:.2f}  "
                     f"memory x{report['memory_ratio_bf16_vs_reference_fp32']:.2f}")
    if report.get("generation"):
        g = report["generation"]
        lines += ["", f"generation ({g['prompts']} prompts, {g['max_new_tokens']} new tokens, greedy): "
                      f"one at a time {g['one_at_a_time_s']:.1f} s, batched {g['batched_s']:.1f} s, "
                      f"x{g['generation_speedup']:.1f} ({g['identical_outputs']}/{g['prompts']} outputs identical)"]
    lines += ["", "targets: " + ", ".join(f"{k} {'>=' if k != 'memory_ratio' else '<='} {v}: "
                                          f"{'met' if report['targets_met'].get(k) else 'NOT met'}"
                                          for k, v in TARGETS.items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/bench.py", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--forget", type=Path, help="forget rows: a CSV/JSONL with prompt and response fields")
    parser.add_argument("--normal", type=Path, help="normal rows: a CSV/JSONL with Question and Best Answer fields")
    parser.add_argument("--configs", default="lora,full,lora-bf16", help=f"comma list of {', '.join(CONFIGS)}")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--gen-prompts", type=int, default=16)
    parser.add_argument("--gen-tokens", type=int, default=32)
    parser.add_argument("--no-generation", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--quiet-sides", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--side", choices=("ours", "reference"), help=argparse.SUPPRESS)
    parser.add_argument("--config", choices=tuple(CONFIGS), help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    with tempfile.TemporaryDirectory(prefix="unlearn-bench-") as tmp:
        scratch = Path(tmp)
        if args.side:  # a child process: one side of one configuration
            result = (run_ours if args.side == "ours" else run_reference)(args, scratch)
            args.result.write_text(json.dumps(result))
            return 0

        configs = [c.strip() for c in args.configs.split(",") if c.strip()]
        unknown = [c for c in configs if c not in CONFIGS]
        if unknown:
            parser.error(f"unknown config {unknown[0]!r}; known: {', '.join(CONFIGS)}")
        report = {"model": args.model, "data": data_section(args, scratch)[1], "threads": torch.get_num_threads(),
                  "warmup": args.warmup, "steps": args.steps, "load_average": os.getloadavg(),
                  "command": " ".join(["python benchmarks/bench.py", *(argv if argv is not None else sys.argv[1:])])}
        report["peak_gflops"] = {"fp32": matmul_peak_gflops(torch.float32), "bf16": matmul_peak_gflops(torch.bfloat16)}
        report["configs"] = {c: compare_config(c, args, scratch, report["peak_gflops"]) for c in configs}
        if not args.no_generation:
            report["generation"] = generation_benchmark(args, scratch)
        report["load_average_end"] = os.getloadavg()
        headline = report["configs"].get("lora") or next(iter(report["configs"].values()), {})
        for key in ("speedup_steps_per_s", "memory_ratio"):
            if key in headline:
                report[key] = headline[key]
        fp32, bf16 = report["configs"].get("lora"), report["configs"].get("lora-bf16w")
        if fp32 and bf16:  # the bf16 path (bf16 weights and compute) against the paper's loop in fp32
            report["speedup_bf16_vs_reference_fp32"] = bf16["ours"]["steps_per_s"] / fp32["reference"]["steps_per_s"]
            report["memory_ratio_bf16_vs_reference_fp32"] = bf16["ours"]["peak_rss_mb"] / fp32["reference"]["peak_rss_mb"]
        if "generation" in report:
            report["generation_speedup"] = report["generation"]["generation_speedup"]
        report["targets_met"] = {k: (report[k] <= v if k == "memory_ratio" else report[k] >= v)
                                 for k, v in TARGETS.items() if k in report}
        report["losses_agree"] = all(r["losses_agree"] for r in report["configs"].values())
        print(render(report))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2, default=float))
    return 0 if report["losses_agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
