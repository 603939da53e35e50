"""Where training's numbers go: `train_log.jsonl`, and the experiment trackers of `train.report_to`
(TensorBoard, Weights & Biases) through accelerate's trackers, into OUTPUT_DIR/logs/. Every row -
a step's losses, a validation of `select:`, an on-policy round - goes through `TrainLog.write`, so
a tracker shows exactly the values of the log (TensorBoard stores them as float32)."""
from __future__ import annotations

import os
from pathlib import Path

from accelerate import Accelerator

from unlearn.config import TrainConfig
from unlearn.io import append_jsonl
from unlearn.objectives.resolve import ResolvedMethod

PROJECT = "unlearn"  # the W&B project; TensorBoard's events go to logs/unlearn/


class TrainLog:
    """Appends a row to train_log.jsonl (the main process) and logs its numbers to the trackers."""

    def __init__(self, path: Path, accelerator: Accelerator | None = None):
        self.path, self.accelerator = Path(path), accelerator

    def start(self, config: dict, run_name: str, resumed_at: int) -> None:
        """Open the trackers; a resumed run hides the events a killed run logged after its checkpoint."""
        if self.accelerator is None or not self.accelerator.log_with:
            return
        logs = Path(self.accelerator.logging_dir)
        self.accelerator.init_trackers(PROJECT, config=config, init_kwargs={
            "tensorboard": {"purge_step": resumed_at + 1} if resumed_at else {},
            "wandb": {"mode": os.environ.get("WANDB_MODE", "offline"), "dir": str(logs), "name": run_name}})

    def write(self, row: dict) -> None:
        if self.accelerator is None or self.accelerator.is_main_process:  # one log per run
            append_jsonl(self.path, row)
        if self.accelerator is not None and self.accelerator.trackers:
            self.accelerator.log(scalars(row), step=row["step"])

    def finish(self) -> None:
        if self.accelerator is not None and self.accelerator.trackers:
            self.accelerator.end_training()


def scalars(row: dict) -> dict[str, float]:
    """A row's numbers, tagged by what wrote it: train/loss, validation/leak_rate@forget, onpolicy/flagged."""
    group = "validation" if row.get("validation") else row.get("kind", "train")
    return {f"{group}/{key}": value for key, value in row.items()
            if key not in ("step", "validation", "kind") and isinstance(value, (int, float))}


def hyperparameters(config: TrainConfig, method: ResolvedMethod) -> dict[str, str | int | float | bool | None]:
    """What trackers store beside the curves: the method, its weights, the train settings (one level)."""
    train = {f"train.{key}": value for key, value in config.model_dump(mode="json").items()
             if not isinstance(value, list)}
    return {"method": method.method.name, **{f"weights.{name}": w for name, w in method.weights.items()}, **train}
