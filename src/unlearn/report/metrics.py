"""Before/after metric rows: which direction is better, the change, and the terminal table.

Metric names are free-form (`harmful_rate@unseen`): the part before '@' is the group, the part after
it the subset it was measured on. Direction is read from the name, so a new metric needs no entry here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from rich.table import Table

HIGHER_IS_BETTER = ("recall", "accuracy", "similarity", "diversity")  # checked first: "recall_rate" is higher
LOWER_IS_BETTER = ("rate", "leak", "auc", "perplexity", "nonsense")


def direction(name: str) -> int:
    """+1 if higher is better, -1 if lower is better, 0 if the name does not say."""
    base = name.split("@", 1)[0].lower()
    if any(word in base for word in HIGHER_IS_BETTER):
        return 1
    if any(word in base for word in LOWER_IS_BETTER):
        return -1
    return 0


def arrow(sign: int) -> str:
    return {1: "↑", -1: "↓"}.get(sign, "")


@dataclass(frozen=True)
class MetricRow:
    name: str
    group: str
    subset: str  # "" for the metric measured on the whole group
    values: dict[str, float | None]  # stage ("before", "after", or "value" for a flat dict) -> value
    direction: int

    @property
    def before(self) -> float | None:
        return self.values.get("before")

    @property
    def after(self) -> float | None:
        return self.values.get("after")

    @property
    def delta(self) -> float | None:
        if self.before is None or self.after is None:
            return None
        return self.after - self.before

    @property
    def verdict(self) -> str:
        """'better', 'worse' or 'same' (also 'same' when the direction or a value is unknown)."""
        delta = self.delta
        if delta is None or not self.direction or not math.isfinite(delta) or abs(delta) < 1e-12:
            return "same"
        return "better" if delta * self.direction > 0 else "worse"


def split_stages(metrics: dict) -> dict[str, dict[str, float]]:
    """{"before": {...}, "after": {...}} (either may be missing); a flat {name: value} dict is one "value" stage."""
    stages = {k: metrics[k] for k in ("before", "after") if isinstance(metrics.get(k), dict)}
    return stages or {"value": {k: v for k, v in metrics.items() if isinstance(v, (int, float))}}


def metric_rows(metrics: dict) -> list[MetricRow]:
    """One row per metric name, groups in order of first appearance, the unqualified name first."""
    stages = split_stages(metrics)
    names = list(dict.fromkeys(name for values in stages.values() for name in values))
    groups = list(dict.fromkeys(n.split("@", 1)[0] for n in names))
    rows = []
    for group in groups:
        members = [n for n in names if n.split("@", 1)[0] == group]
        members.sort(key=lambda n: "@" in n)  # stable: keeps the file's order of subsets
        for name in members:
            rows.append(MetricRow(name, group, name.split("@", 1)[1] if "@" in name else "",
                                  {stage: _number(values.get(name)) for stage, values in stages.items()},
                                  direction(name)))
    return rows


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "—"
    if not math.isfinite(value):
        return str(value)
    value = round(value, 3) + 0.0 if abs(value) < 100 else value  # -0.0001 shows as 0.000, not −0.000
    size = abs(value)
    text = f"{value:+.3f}" if size < 100 else f"{value:+.1f}" if size < 1e5 else f"{value:+.3g}"
    text = text.replace("-", "−")
    return text if signed else text.lstrip("+")


def metrics_table(metrics: dict) -> Table:
    """The before/after/change table for the terminal, changes coloured by whether they help."""
    rows = metric_rows(metrics)
    columns = list(split_stages(metrics))
    table = Table(title="metrics", title_style="bold")
    table.add_column("metric")
    table.add_column("", justify="center")
    for column in columns:
        table.add_column(column, justify="right")
    paired = columns == ["before", "after"]
    if paired:
        table.add_column("change", justify="right")
    colour = {"better": "green", "worse": "red", "same": "dim"}
    for row in rows:
        cells = [row.name, arrow(row.direction)]
        cells += [fmt(row.values[column]) for column in columns]
        if paired:
            cells.append(f"[{colour[row.verdict]}]{fmt(row.delta, signed=True)}[/]")
        table.add_row(*cells)
    return table
