"""`unlearn demo`: make a real model leak fictitious people's private data, then unlearn it.

Step 1 (inject): fine-tune the default model on every fictitious record until it recalls them
(cached under $UNLEARN_CACHE/demo, so a second demo skips it). Normal data: general prompts you can
read in scenario.py, answered by the leaky model itself.
Step 2 (unlearn): `unlearn run` on the leaky model with the paper method; the forget data is only
what the model says when it leaks (its own answers to the forget people's questions); normal data
is the retain people's records (same format, the paper's lesson) plus the general prompts.
Step 3 (evaluate): leak rate on the forget people's trained and held-out phrasings, recall on
retain people, utility on unseen general prompts - before and after, through `unlearn run`'s eval.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from unlearn.config import load_config
from unlearn.data.encoding import PairEncoder
from unlearn.demo.scenario import GENERAL_PROMPTS, make_scenario
from unlearn.evaluation.generation import answer_stop_ids, generate
from unlearn.io import atomic_dir, atomic_write_json, atomic_write_jsonl
from unlearn.models.loading import cache_dir, load_model
from unlearn.models.precision import native_bf16
from unlearn.layout import RunFolder
from unlearn.run import run
from unlearn.training.finetune import finetune
from unlearn.ui import console, table

BASE_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class DemoSize:
    n_forget: int
    n_retain: int
    inject_epochs: int
    inject_lr: float
    replay: int  # general prompts whose base-model answers are replayed during injection
    steps: int
    lr: float
    normal_train: int  # general prompts used as normal data; the rest evaluate utility
    general: int  # general prompts used in all (train + evaluation), from the start of the list
    validate_every: int
    validate_rows: int  # rows of each validation prompt set


FULL = DemoSize(n_forget=6, n_retain=8, inject_epochs=5, inject_lr=3e-4, replay=44, steps=16, lr=9e-4,
                normal_train=24, general=44, validate_every=8, validate_rows=36)
# the test suite's end-to-end run: the fewest people, prompts and steps that still show the directions
QUICK = DemoSize(n_forget=2, n_retain=4, inject_epochs=5, inject_lr=3e-4, replay=8, steps=8, lr=1e-3,
                 normal_train=16, general=28, validate_every=8, validate_rows=24)

# prompts per generate call: on a CPU a decode step over 64 rows costs far less than two over 32
GENERATION_BATCH = 64

# demo metric name -> the evaluator's key
DEMO_METRICS = {"forget_leak_rate": "leak_rate@forget", "paraphrase_leak_rate": "leak_rate@paraphrase",
                "retain_recall": "recall@retain", "similarity_to_original": "similarity_to_original@normal",
                "nonsense_rate": "nonsense_rate@normal", "diversity": "diversity@normal"}


def _key(size: DemoSize) -> str:
    precision = "v4-bf16-masters" if native_bf16() else "v4-float32"  # what finetune runs at on this device
    text = json.dumps([size.n_forget, size.n_retain, size.inject_epochs, size.inject_lr, size.replay, precision])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def inject(size: DemoSize, scenario) -> tuple[Path, float, bool]:
    """The leaky model: the base model fine-tuned on every record (cached). The general prompts,
    answered by the base model itself, are replayed beside the records so that the leak is the
    only thing the fine-tune teaches (without them the model starts answering everything with a
    name and a place)."""
    folder = cache_dir() / "demo" / f"leaky-{_key(size)}"
    if (folder / "config.json").is_file():
        return folder, 0.0, True
    started = time.perf_counter()
    model, tokenizer = load_model(BASE_MODEL)
    encoder = PairEncoder(tokenizer, "auto", 192)
    prompts = GENERAL_PROMPTS[: size.replay]
    replay = _answers(model, tokenizer, prompts, 48, "answering general prompts (base model)")
    rows = [encoder.encode(r["question"], r["answer"]) for r in scenario.injection_rows()]
    rows += [encoder.encode(p, _whole_sentences(a)) for p, a in zip(prompts, replay) if _whole_sentences(a)]
    finetune(model, rows, tokenizer.pad_token_id, epochs=size.inject_epochs, lr=size.inject_lr,
             description="step 1: injecting the leak")
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return folder, time.perf_counter() - started, False


def _whole_sentences(text: str) -> str:
    """An answer cut by max_new_tokens, trimmed back to its last full sentence."""
    text = text.strip()
    end = max(text.rfind(mark) for mark in ".!?")
    return text[: end + 1] if end > 0 else text


def _answers(model, tokenizer, prompts: list[str], max_new_tokens: int, description: str) -> list[str]:
    encoder = PairEncoder(tokenizer, "auto", 256)
    return generate(model, tokenizer, [encoder.prompt_ids(p) for p in prompts], max_new_tokens, GENERATION_BATCH,
                    stop_ids=answer_stop_ids(tokenizer, encoder), description=description)


def leaky_answers(leaky: Path, prompts: list[str], max_new_tokens: int) -> list[str]:
    """The leaky model's greedy answers, kept beside it (a second demo reads them back)."""
    key = hashlib.sha256(json.dumps([prompts, max_new_tokens]).encode()).hexdigest()[:12]
    cached = leaky / f"answers-{key}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    model, tokenizer = load_model(str(leaky))
    outputs = _answers(model, tokenizer, prompts, max_new_tokens, "answering with the leaky model")
    atomic_write_json(cached, outputs)
    return outputs


def write_data(folder: Path, size: DemoSize, scenario, leaky: Path) -> dict[str, Path]:
    """Data files of the run. Forget responses are the leaky model's own leaking answers."""
    forget = scenario.forget_rows()
    general = GENERAL_PROMPTS[: size.general]
    outputs = leaky_answers(leaky, [r["question"] for r in forget] + general, 48)
    forget_out, general_out = outputs[: len(forget)], outputs[len(forget):]
    leaked = [dict(r, answer=o.strip()) for r, o in zip(forget, forget_out) if r["value"].lower() in o.lower()]
    if not leaked:
        raise RuntimeError("the leaky model leaks nothing; injection failed")
    normal = [{"question": p, "answer": _whole_sentences(o)} for p, o in zip(general, general_out)
              if _whole_sentences(o)]
    paths = {"forget_leaked": folder / "forget_leaked.jsonl", "forget": folder / "forget.jsonl",
             "paraphrase": folder / "paraphrase.jsonl", "retain": folder / "retain.jsonl",
             "general_train": folder / "general_train.jsonl", "general_eval": folder / "general_eval.jsonl"}
    atomic_write_jsonl(paths["forget_leaked"], leaked)
    atomic_write_jsonl(paths["forget"], [dict(r, answer=r["value"]) for r in forget])
    atomic_write_jsonl(paths["paraphrase"], [dict(r, answer=r["value"]) for r in scenario.paraphrase_rows()])
    atomic_write_jsonl(paths["retain"], scenario.retain_rows())
    atomic_write_jsonl(paths["general_train"], normal[: size.normal_train])
    atomic_write_jsonl(paths["general_eval"], normal[size.normal_train:])
    return paths


def demo_config(model: Path, paths: dict[str, Path], size: DemoSize) -> dict:
    qa = {"prompt": "question", "response": "answer"}
    value = {"prompt": "question", "response": "value"}
    return {
        "model": {"name": str(model), "dtype": "float32", "lora": {"r": 16, "alpha": 32}},
        "data": {
            "forget": {"path": str(paths["forget_leaked"]), **qa},
            # same-format rows (retain people) keep the knowledge; general prompts keep the manner.
            # Retain rows dominate the normal batch: measured here, with an even mix the model learns
            # "a question about a person -> some other person's record" and retain recall collapses
            # together with the leak; with retain rows 3:1 and the KL weighted 3 it does not
            "normal": [{"path": str(paths["retain"]), **qa, "weight": 3.0},
                       {"path": str(paths["general_train"]), **qa, "weight": 1.0}],
            "mismatch_pool": [{"path": str(paths["retain"]), **qa}],
            "max_length": 160,
        },
        "method": {"name": "paper", "mismatch_k": 2, "weights": {"kl_to_original": 3.0}},
        "train": {"lr": size.lr, "batch_size": 4, "normal_batch_size": 8, "max_steps": size.steps, "seed": 8888,
                  "mixed_precision": "auto", "save_every": size.validate_every},
        "output": {"save": "merged"},
        "eval": {
            "generation": {"max_new_tokens": 32, "batch_size": GENERATION_BATCH},
            "tasks": [
                {"name": "contains", "forget": {"path": str(paths["forget"]), **value},
                 "paraphrase": {"path": str(paths["paraphrase"]), **value},
                 "retain": {"path": str(paths["retain"]), **value}},
                {"name": "utility", "normal": {"path": str(paths["general_eval"]), **qa}},
            ],
        },
        "select": {
            "every": size.validate_every,
            "eval": {  # the values sit in the answer's first words ("X lives in Tromso.")
                "generation": {"max_new_tokens": 16, "batch_size": GENERATION_BATCH},
                "tasks": [
                    {"name": "contains", "forget": {"path": str(paths["forget"]), **value},
                     "retain": {"path": str(paths["retain"]), **value}},
                    {"name": "utility", "normal": {"path": str(paths["general_train"]), **qa}},
                ],
                "max_rows": size.validate_rows,  # full: every forget row (8 people x 6), half the retain rows
            },
            "constraint": "recall@retain >= before.recall@retain - 0.1 and similarity_to_original@normal >= 0.8",
            "score": "-leak_rate@forget",
            "stop_when": "leak_rate@forget <= 0.0",
        },
    }


def run_demo(output_dir: str | Path, quick: bool = False, overwrite: bool = True) -> dict:
    output_dir = Path(output_dir)
    folder = RunFolder(output_dir)
    folder.prepare(resume=False, overwrite=overwrite)
    size = QUICK if quick else FULL
    scenario = make_scenario(size.n_forget, size.n_retain, seed=0)
    wall = {}
    started = time.perf_counter()
    torch.manual_seed(0)

    leaky, seconds, cached = inject(size, scenario)
    wall["inject"] = round(seconds, 2)
    tick = time.perf_counter()
    paths = write_data(output_dir / "data", size, scenario, leaky)
    wall["prepare_data"] = round(time.perf_counter() - tick, 2)

    config = load_config(raw=demo_config(leaky, paths, size))
    tick = time.perf_counter()
    result = run(config, output_dir, overwrite=True)
    wall["unlearn_and_evaluate"] = round(time.perf_counter() - tick, 2)
    for part, value in result.summary["wall_seconds"].items():
        wall[f"run.{part}"] = value

    metrics = json.loads(folder.metrics.read_text())
    for name, key in DEMO_METRICS.items():
        for stage in ("before", "after", "directions"):
            metrics[stage][name] = metrics[stage].get(key)
    atomic_write_json(folder.metrics, metrics)
    summary = dict(result.summary, demo={"quick": quick, "forget_people": size.n_forget,
                                         "retain_people": size.n_retain, "leaky_model": str(leaky),
                                         "inject_cached": cached})
    wall["total"] = round(time.perf_counter() - started, 2)
    summary["wall_seconds"] = wall
    atomic_write_json(folder.summary, summary)
    from unlearn.report.build import build_report

    build_report(output_dir)
    rows = [[name, metrics["before"][name], metrics["after"][name]] for name in DEMO_METRICS]
    console.print(table("unlearn demo: before vs after", ["metric", "before", "after"], rows))
    selection = summary.get("selection")
    if selection:
        console.print(f"selected step {selection['best_step']}: {selection['reason']}")
    injected = "cached" if cached else f"{wall['inject']:.0f} s"
    console.print(f"wall time {wall['total']:.0f} s (inject {injected}); report: {output_dir / 'report.html'}")
    return {"metrics": metrics, "summary": summary}
