"""Multi-process training under `accelerate launch` (DDP, FSDP, DeepSpeed ZeRO-3).

Which batches a process takes: an optimizer step consumes `num_processes * grad_accum` consecutive
step batches of `UnlearnData.step_batch`, and process r takes, for micro-batch m, the batch
((step - 1) * grad_accum + m) * num_processes + r. Every process's loss is a mean over its own
batch and the gradients are averaged, so N processes compute exactly what one process computes
with `grad_accum` multiplied by N: that single-process run is "the same global batch"
(tests/test_ddp.py checks the saved weights agree). `train.batch_size` is per process and micro-batch.

Everything the loop decides from the log (stop rules, divergence) reads values averaged over
processes, so every process takes the same branch; only the main process writes files.
"""
from __future__ import annotations

import copy
import logging
import os
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType

from unlearn.models.precision import resolve_mixed_precision

log = logging.getLogger(__name__)

# types whose parameters live in shards: every process must run the same number of forwards
# (each one gathers parameters collectively), and the weights must be gathered to be saved
SHARDED = (DistributedType.FSDP, DistributedType.DEEPSPEED)


def make_accelerator(mixed_precision: str, trackers: list[str] = (), logs: Path | None = None) -> Accelerator:
    """The run's Accelerator (`mixed_precision` may be "auto"); `trackers` (train.report_to) log into
    the folder `logs`."""
    warn_single_process_launch()
    mixed_precision = resolve_mixed_precision(mixed_precision)
    # accelerate keeps one state per process and refuses a second precision: runs in one Python
    # process (the demo after a bf16 run, a test session) each set their own; the process group stays
    AcceleratorState._reset_state(reset_partial_state=False)
    # no buffer broadcast at each forward: LM buffers (rotary tables) are identical on every process,
    # and processes may run different numbers of forwards per step (length buckets differ)
    ddp = DistributedDataParallelKwargs(broadcast_buffers=False)
    return Accelerator(mixed_precision=mixed_precision, cpu=not torch.cuda.is_available(), kwargs_handlers=[ddp],
                       log_with=list(trackers) or None, project_dir=str(logs) if trackers else None)


def warn_single_process_launch() -> None:
    """`accelerate launch --cpu --num_processes N` starts ONE process (accelerate only spawns CPU
    processes through mpirun); say so instead of silently training on one process."""
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true" and "MASTER_ADDR" in os.environ \
            and "WORLD_SIZE" not in os.environ and "PMI_SIZE" not in os.environ:
        log.warning("accelerate launch --cpu --num_processes N runs a single process; for N CPU processes use "
                    "`accelerate launch --multi_gpu --num_processes N` (gloo) or "
                    "--config_file configs/accelerate/ddp.yaml")


def batch_index(step: int, micro: int, grad_accum: int, accelerator: Accelerator) -> int:
    """The step batch this process takes for micro-batch `micro` of optimizer step `step` (1-based)."""
    return ((step - 1) * grad_accum + micro) * accelerator.num_processes + accelerator.process_index


def agreed_row(accelerator: Accelerator, row: dict, tokens: int) -> tuple[dict, int]:
    """The log row averaged over processes (answer tokens summed): one collective per step."""
    if accelerator.num_processes == 1:
        return row, tokens
    keys = [k for k in row if k != "step"]
    values = torch.tensor([row[k] for k in keys] + [tokens], dtype=torch.float64, device=accelerator.device)
    values = accelerator.reduce(values, "sum").tolist()
    averaged = {k: v / accelerator.num_processes for k, v in zip(keys, values)}
    return {"step": row["step"], **averaged}, int(values[-1])


def prepare_reference(accelerator: Accelerator, reference):
    """The frozen original of a full fine-tune, placed like the trained model: a replica per process
    under DDP, sharded like the trained model under FSDP and ZeRO-3 (so it does not cost a full copy
    per device). With LoRA there is no copy: the original is the same model with adapters off."""
    if reference is None:
        return None
    if accelerator.distributed_type == DistributedType.FSDP:
        return accelerator.prepare_model(reference)  # nothing requires grad: sharded, no optimizer state
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        import deepspeed

        config = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
        config.pop("optimizer", None)
        config.pop("scheduler", None)
        if config.get("zero_optimization", {}).get("stage") != 3:
            config["zero_optimization"] = {"stage": 0}  # stages 1-2 shard optimizer state only: keep a replica
        engine, *_ = deepspeed.initialize(model=reference, config=config)
        engine.eval()
        return engine
    return reference.to(accelerator.device)


def gathered_state(accelerator: Accelerator, model) -> dict | None:
    """The full state dict of a sharded model, on the main process (None elsewhere and when the
    model is whole in memory: one process or DDP). Every process must call it: it is collective."""
    if accelerator.distributed_type not in SHARDED:
        return None
    state = accelerator.get_state_dict(model)  # ZeRO-3 needs stage3_gather_16bit_weights_on_model_save
    return state if accelerator.is_main_process else None


def process_state():
    """This process's place in a launch (a single process when not launched by accelerate).
    Other processes than the main one log errors only: one log per run."""
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    if not state.is_main_process:
        logging.getLogger("unlearn").setLevel(logging.ERROR)
    return state


def whole_model(config, state: dict):
    """A fresh model holding gathered weights (what a sharded run saves and evaluates)."""
    from unlearn.models.loading import load_model
    from unlearn.models.prepare import apply_lora

    model, _ = load_model(config.model.name, config.model.dtype, config.model.trust_remote_code,
                          config.model.allow_pickle)
    if config.model.lora is not None:
        model = apply_lora(model, config.model.lora)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.endswith("lm_head.weight")]:  # a tied head may be left out
        raise RuntimeError(f"gathered weights do not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model
