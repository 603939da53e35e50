"""What a run's output folder holds, named in one place, and the rules for reusing a folder.

    config.yaml        the resolved config           summary.json      steps, wall time, selection
    train_log.jsonl    one line per step              metrics.json      before / after / directions
    generations.jsonl  every evaluated output         report.html/.md   the report, plots/ its figures
    per_question.json  per-question values of the tofu/muse tasks (a later evaluation's reference:)
    negatives.jsonl    on-policy negatives            model/ adapter/   the saved weights
    checkpoints/       for --resume and selection     validation/       select:'s evaluations
    logs/              experiment trackers (train.report_to: TensorBoard events, W&B offline runs)
    original_answers/  the original's answers (normal data with source: original)
"""
from __future__ import annotations

import shutil
from pathlib import Path

from unlearn.errors import InputError


class OutputDirError(InputError):
    pass


class RunFolder:
    MARKERS = ("config.yaml", "train_log.jsonl", "summary.json", "metrics.json")  # a run was here
    FILES = (*MARKERS, "generations.jsonl", "per_question.json", "report.html", "report.md", "negatives.jsonl")
    # FILES, FOLDERS: what --overwrite removes
    FOLDERS = ("checkpoints", "model", "adapter", "plots", "validation", "original_answers", "logs")

    def __init__(self, root: str | Path):
        self.root = root = Path(root)
        self.config, self.train_log = root / "config.yaml", root / "train_log.jsonl"
        self.summary, self.metrics = root / "summary.json", root / "metrics.json"
        self.generations, self.negatives = root / "generations.jsonl", root / "negatives.jsonl"
        self.per_question = root / "per_question.json"
        self.report_html, self.report_md, self.plots = root / "report.html", root / "report.md", root / "plots"
        self.checkpoints, self.validation = root / "checkpoints", root / "validation"
        self.model, self.adapter, self.original_answers = root / "model", root / "adapter", root / "original_answers"
        self.logs = root / "logs"

    def refuse_existing_run(self, resume: bool, overwrite: bool) -> None:
        held = [m for m in self.MARKERS if (self.root / m).exists()]
        if held and not (resume or overwrite):
            raise OutputDirError(f"{self.root}: already holds a run ({held[0]}); pass --overwrite to replace it "
                                 "or --resume to continue it")

    def prepare(self, resume: bool, overwrite: bool) -> None:
        """Refuse a finished run unless told; --overwrite removes only what a run writes."""
        self.refuse_existing_run(resume, overwrite)
        if overwrite and not resume:
            for name in self.FILES:
                (self.root / name).unlink(missing_ok=True)
            for folder in self.FOLDERS:
                shutil.rmtree(self.root / folder, ignore_errors=True)
        self.root.mkdir(parents=True, exist_ok=True)
