"""`unlearn run`: config -> data -> model -> (eval before) -> train -> save -> (eval after) -> report."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from unlearn.config import ConfigError, RunConfig, dump_config, load_config, path_fields
from unlearn.data.batches import UnlearnData, build_data
from unlearn.data.original import original_answers, uses_original
from unlearn.data.sources import read_pairs, source_name
from unlearn.evaluation.cache import model_fingerprint
from unlearn.io import atomic_write_json, atomic_write_text
from unlearn.layout import RunFolder
from unlearn.models.loading import check_causal_lm, load_model, load_tokenizer, pretrained_source
from unlearn.models.prepare import apply_lora, estimate_memory, frozen_copy, num_layers, save_model, scale_update
from unlearn.objectives.resolve import ResolvedMethod, resolve_method
from unlearn.preflight import format_bytes, preflight
from unlearn.training.distributed import process_state, whole_model
from unlearn.training.loop import train

log = logging.getLogger(__name__)

@dataclass
class RunResult:
    output_dir: Path
    summary: dict
    paths: dict[str, str]
    metrics: dict | None = None


def run(config: RunConfig | str | Path, output_dir: str | Path, *, overrides: list[str] | None = None,
        resume: bool = False, overwrite: bool = False) -> RunResult:
    """Run one unlearning job; everything lands in `output_dir`. Mirrors `unlearn run`, its checks
    included: bad input fails here, before any weights load."""
    if not isinstance(config, RunConfig):
        config = load_config(config, overrides)
    output_dir = Path(output_dir)
    state = process_state()  # under `accelerate launch`, only the main process writes files
    if config.data.forget.source == "self" and state.num_processes > 1:
        raise ConfigError("data.forget.source: self samples and judges on one process; run it without "
                          "accelerate launch (or with --num_processes 1)")
    if config.train.project_conflicts and state.num_processes > 1:
        raise ConfigError("train.project_conflicts: the two gradients are taken on one process; run it without "
                          "accelerate launch (or with --num_processes 1)")
    preflight(config, output_dir, resume=resume, overwrite=overwrite)
    state.wait_for_everyone()  # every process checked the folder before the main one writes to it
    folder = RunFolder(output_dir)
    if state.is_main_process:
        folder.prepare(resume, overwrite)
    state.wait_for_everyone()
    wall = {}
    started = time.perf_counter()

    model, tokenizer = load_model(config.model.name, config.model.dtype, config.model.trust_remote_code,
                                  config.model.allow_pickle)
    method = resolve_method(config.method, num_layers(model))
    train_cfg = config.train
    model_files = model_fingerprint(config.model.name, config.model.dtype)  # keys the caches of the original's outputs
    data_cfg = config.data
    if uses_original(data_cfg):  # the normal answers are the original model's own (before any change)
        data_cfg = original_answers(data_cfg, model, tokenizer, output_dir, resume=resume,
                                    write=state.is_main_process, model_files=model_files)
        state.wait_for_everyone()  # the other processes read the main process's files
    data = training_data(data_cfg, tokenizer, train_cfg, method)
    # rows each source gives training (on-policy negatives are counted by their rounds instead)
    sizes = {"forget": [len(data.forget) if config.data.forget.source == "dataset" else None],
             "normal": [len(rows) for rows in data.normal], "mismatch_pool": len(data.pool_answers)}
    if state.is_main_process:
        atomic_write_text(folder.config, dump_config(config))
    wall["load"] = time.perf_counter() - started

    evaluator = None
    if config.eval and state.is_main_process:
        from unlearn.evaluation.runner import Evaluator

        evaluator = Evaluator(config.eval, tokenizer, data_cfg, output_dir)
        tick = time.perf_counter()
        evaluator.evaluate_original(model, model_files)
        wall["eval_before"] = time.perf_counter() - tick

    reference = None
    if config.model.lora is not None:
        torch.manual_seed(train_cfg.seed)  # LoRA's random init: the same seed gives the same run
        model = apply_lora(model, config.model.lora)
    elif needs_original(config, method):
        reference = frozen_copy(model)
    if config.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if config.model.lora is not None:
            model.enable_input_require_grads()

    hooks = []
    if config.data.forget.source == "self":
        from unlearn.training.onpolicy import OnPolicyNegatives

        hooks.append(OnPolicyNegatives(config.model_copy(update={"data": data_cfg}), tokenizer, data, output_dir))
    selector = _selector(config, data_cfg, tokenizer, output_dir, reference, model_files) if config.select else None
    hooks += [selector] if selector else []
    tick = time.perf_counter()
    result = train(model, data, method, train_cfg, output_dir, reference_model=reference, hooks=hooks,
                   resume=resume)
    wall["train"] = time.perf_counter() - tick
    if selector is not None:
        selector.finish(model)  # the selected checkpoint's weights
    if not state.is_main_process:
        return RunResult(output_dir, {"steps": result.steps, "stop_reason": result.stop_reason,
                                      "diverged": result.diverged}, {})
    if result.full_state is not None:  # sharded training (FSDP, ZeRO-3): save the gathered weights
        model = whole_model(config, result.full_state)
        reference = None
    scale = config.output.update_scale
    if config.model.lora is None and reference is None and (evaluator is not None or scale != 1.0):
        # the after stage and the update's scale read the original
        reference = frozen_copy(load_model(config.model.name, config.model.dtype, config.model.trust_remote_code,
                                           config.model.allow_pickle)[0])
    scale_update(model, scale, None if config.model.lora is not None else reference)

    tick = time.perf_counter()
    paths = save_model(model, tokenizer, output_dir, config.output.save)
    wall["save"] = time.perf_counter() - tick

    metrics = None
    if evaluator is not None:
        tick = time.perf_counter()
        metrics = evaluator.evaluate(model, stage="after", reference_model=reference)
        wall["eval_after"] = time.perf_counter() - tick

    summary = {
        "method": method.method.name, "weights": method.weights, "steps": result.steps,
        "max_steps": train_cfg.max_steps, "stop_reason": result.stop_reason, "diverged": result.diverged,
        "restored_step": result.restored_step, "processes": state.num_processes, "update_scale": scale,
        "train_seconds": round(result.seconds, 2),
        "wall_seconds": {k: round(v, 2) for k, v in wall.items()},
        "total_seconds": round(time.perf_counter() - started, 2), "outputs": paths, "data": sizes,
        "final": result.log[-1] if result.log else None,
    }
    if config.train.project_conflicts and result.log:
        cosines = [row["grad_cosine"] for row in result.log if "grad_cosine" in row]
        summary["conflicts"] = {"steps_conflicting": sum(row.get("conflict", 0) > 0 for row in result.log),
                                "steps": len(result.log),
                                "mean_cosine": round(sum(cosines) / len(cosines), 4) if cosines else None}
    for hook in hooks:
        summary.update(hook.summary())
    atomic_write_json(folder.summary, summary)
    from unlearn.report.card import write_model_cards  # the report's pieces: matplotlib loads only here

    write_model_cards(config, output_dir)
    if evaluator is not None:
        from unlearn.report.build import build_report

        build_report(output_dir)
    return RunResult(output_dir, summary, paths, metrics)


def training_data(data_cfg, tokenizer, train_cfg, method: ResolvedMethod) -> UnlearnData:
    """The step batches a run trains on (also the alignment cost benchmark's unlearning approach)."""
    return build_data(data_cfg, tokenizer, seed=train_cfg.seed, batch_size=train_cfg.batch_size,
                      normal_batch_size=train_cfg.normal_batch_size or train_cfg.batch_size,
                      mismatch_k=method.knobs.mismatch_k if "mismatch" in method.groups else 0,
                      mismatch_answers=method.mismatch_answers,
                      guard_answers=method.mismatch_answers if "guard" in method.groups else None)


def plan(config: RunConfig, output_dir: str | Path, *, resume: bool = False, overwrite: bool = False) -> list[str]:
    """What `unlearn run` would do (`--dry-run`): the same checks, then the data read and tokenised,
    the model's config read and its network built on the meta device - no weights are loaded."""
    output_dir = Path(output_dir).resolve()
    rows = preflight(config, output_dir, resume=resume, overwrite=overwrite)
    model_cfg, train_cfg = config.model, config.train
    folder, gguf_file = pretrained_source(model_cfg.name)
    model_config = check_causal_lm(model_cfg.name, folder, model_cfg.trust_remote_code, gguf_file)
    method = resolve_method(config.method, num_layers(model_config))
    tokenizer = load_tokenizer(model_cfg.name, model_cfg.trust_remote_code)
    copy = model_cfg.lora is None and needs_original(config, method)
    memory = estimate_memory(model_config, model_cfg.dtype, model_cfg.lora, copy, model_cfg.trust_remote_code)

    lora = model_cfg.lora
    lines = ["dry run: checked, nothing trained, no weights loaded",
             f"model: {model_cfg.name} ({memory.parameters / 1e6:.1f} M parameters, {model_cfg.dtype}), "
             + (f"LoRA r={lora.r} on {lora.target_modules}" if lora else "full fine-tune")
             + f": {memory.trainable / 1e6:.2f} M trainable",
             f"method: {method.method.name}: " + ", ".join(f"{name} {w:g}" for name, w in method.weights.items()),
             "reference: " + ("the original is the same network with the LoRA adapters off (no copy)" if lora
                              else "a frozen copy of the original beside the trained model" if copy
                              else "none (no objective, guard or validation reads the original)"),
             "data (rows after where:, skip and limit):"]
    generated = {"self": ", answers: the model's own, sampled and judged during training",
                 "original": ", answers: the original model's greedy ones, generated before training"}
    for where, source in path_fields(config.data, "data"):
        count = rows[where] if where in rows else len(read_pairs(source, tokenizer))  # plain text: token windows
        lines.append(f"  {where}: {source_name(source)}: {count} rows{generated.get(source.source, '')}")
    lines += [f"steps: {train_cfg.max_steps} (train.max_steps)"
              + (f", {train_cfg.grad_accum} micro-batches each" if train_cfg.grad_accum > 1 else ""),
              _step_size(config, tokenizer, method),
              "memory (an estimate: weights and training state; activations not counted): weights "
              f"{format_bytes(memory.weights)}" + (f" + frozen copy {format_bytes(memory.frozen_copy)}" if copy else "")
              + f" + gradients and AdamW state {format_bytes(memory.training_state)} = {format_bytes(memory.total)}"]
    if config.eval:
        lines.append("eval: " + ", ".join(task.name for task in config.eval.tasks) + ", before and after")
    if config.select:
        lines.append(f"select: validation every {config.select.every} steps, score {config.select.score}")
    if config.output.update_scale != 1.0:
        lines.append(f"update: scaled by {config.output.update_scale:g} (output.update_scale) before saving"
                     + (" and the after-evaluation" if config.eval else ""))
    saved = {"merged": "model/", "adapter": "adapter/", "both": "model/, adapter/", "none": ""}[config.output.save]
    outputs = ["config.yaml", "train_log.jsonl", "summary.json", *([f"{saved} (with README.md, the model card)"]
                                                                 if saved else []),
               *(["metrics.json", "report.html", "report.md"] if config.eval else []),
               *([f"logs/ ({', '.join(train_cfg.trackers)})"] if train_cfg.trackers else [])]
    return lines + [f"outputs: {output_dir}/: " + ", ".join(outputs)]


def _step_size(config: RunConfig, tokenizer, method: ResolvedMethod, sample: int = 16) -> str:
    """Rows and tokens of a micro-batch, measured on the first `sample` step batches."""
    if uses_original(config.data) or config.data.forget.source == "self":
        return ("per micro-batch: rows and tokens are known once the model has written its answers "
                f"(at most data.max_length={config.data.max_length} tokens a row)")
    data = training_data(config.data, tokenizer, config.train, method)
    batches = [data.step_batch(step) for step in range(min(sample, config.train.max_steps))]
    groups = dict.fromkeys(g for batch in batches for g in batch.row_group)
    mean = {g: sum(batch.row_group.count(g) for batch in batches) / len(batches) for g in groups}
    tokens = sum(int(batch.attention_mask.sum()) for batch in batches) / len(batches)
    answers = sum(batch.answer_tokens for batch in batches) / len(batches)
    return (f"per micro-batch: {sum(mean.values()):g} rows (" + ", ".join(f"{n:g} {g}" for g, n in mean.items())
            + f"), {tokens:.0f} tokens, {answers:.0f} of them answer tokens (mean of the first {len(batches)})")


def needs_original(config: RunConfig, method: ResolvedMethod) -> bool:
    """Whether a full fine-tune keeps a frozen copy of the original beside the model it trains: an
    objective reads the original, the max_kl guard reads the KL, or validation compares with it."""
    return bool(method.needs.reference_groups or config.train.max_kl is not None or config.select)


def validation_eval(config: RunConfig):
    """`select.eval`, else the run's eval section made cheap (32 new tokens, 16 rows per set)."""
    if config.select.eval is not None:
        return config.select.eval
    generation = config.eval.generation
    return config.eval.model_copy(update={
        "generation": generation.model_copy(update={"max_new_tokens": min(generation.max_new_tokens, 32)}),
        "max_rows": min(config.eval.max_rows or 16, 16)})


def _selector(config: RunConfig, data_cfg, tokenizer, output_dir: Path, reference, model_files):
    """Validation every `select.every` steps with `validation_eval(config)`."""
    from unlearn.evaluation.runner import Evaluator
    from unlearn.training.select import Selector

    evaluator = Evaluator(validation_eval(config), tokenizer, data_cfg, RunFolder(output_dir).validation)

    def validate(model, step: int) -> dict[str, float]:
        if step == 0:  # the original model (adapters still zero, or the untouched full model)
            return evaluator.evaluate_original(model, model_files)
        return evaluator.evaluate(model, stage=f"step-{step}", reference_model=reference)

    return Selector(config.select, validate, output_dir)
