"""What a report shows, already read and paired: the data the HTML and markdown pages render
(build.py fills it from a run folder), and the small formatting they share."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from unlearn.report.metrics import MetricRow
from unlearn.report.plots import Plot

ONPOLICY_COLUMNS = ("round", "step", "sampled", "flagged", "flagged share", "negatives")
ONPOLICY_NOTE = ("Each round samples the model's own answers to the forget prompts; the ones the judge flags are "
                 "what training unlearns until the next round (all answers are in negatives.jsonl).")


class Fact(NamedTuple):
    label: str
    value: str
    note: str = ""  # a short qualifier shown under the value


@dataclass(frozen=True)
class Example:
    prompt: str
    outputs: dict[str, str | None]  # stage -> output (None: not generated at that stage)


@dataclass(frozen=True)
class ExampleGroup:
    task: str
    subset: str
    examples: list[Example]


@dataclass
class Report:
    """Everything the two renderers show, already read, paired and truncated."""
    folder: Path
    title: str
    facts: list[Fact] = field(default_factory=list)  # the header's cards
    warnings: list[str] = field(default_factory=list)
    settings: list[tuple[str, str]] = field(default_factory=list)  # key config values
    timing: list[tuple[str, str]] = field(default_factory=list)  # phase -> duration
    config_text: str | None = None
    metrics: list[MetricRow] = field(default_factory=list)
    metric_stages: list[str] = field(default_factory=list)
    selection: str | None = None
    onpolicy: list[list[str]] = field(default_factory=list)  # one row of ONPOLICY_COLUMNS per round
    validation_columns: list[str] = field(default_factory=list)
    validation: list[list[str]] = field(default_factory=list)  # one row per validation, selected one marked
    plots: list[Plot] = field(default_factory=list)
    examples: list[ExampleGroup] = field(default_factory=list)
    example_stages: list[str] = field(default_factory=list)

    def plot(self, name: str) -> Plot | None:
        return next((p for p in self.plots if p.name == name), None)


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
