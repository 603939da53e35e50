"""Before/after metric rows: which direction is better, the change, and the terminal table.

Metric names are free-form (`harmful_rate@unseen`): the part before '@' is the group, the part after
it the subset it was measured on. Which way is better comes from the eval task that wrote a metric
(metrics.json's "directions", see config/eval.py): "higher", "lower", an ideal value, or None.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from rich.table import Table

from unlearn.config.eval import Direction


def goodness(direction: Direction, value: float | None) -> float | None:
    """The value signed so that higher is better: kept ("higher"), negated ("lower"), minus its
    distance to an ideal value (a number); None when the direction or the value is unknown."""
    if value is None or direction is None or not math.isfinite(value):
        return None
    if direction == "higher":
        return value
    if direction == "lower":
        return -value
    return -abs(value - float(direction))


def arrow(direction: Direction) -> str:
    if direction is None:
        return ""
    return {"higher": "↑", "lower": "↓"}.get(direction) or f"→{float(direction):g}"


def explain(direction: Direction) -> str:
    if direction is None:
        return "direction unknown"
    return {"higher": "higher is better", "lower": "lower is better"}.get(direction) or f"{float(direction):g} is ideal"


@dataclass(frozen=True)
class MetricRow:
    name: str
    group: str
    subset: str  # "" for the metric measured on the whole group
    values: dict[str, float | None]  # stage ("before", "after", or "value" for a flat dict) -> value
    direction: Direction

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
        before, after = goodness(self.direction, self.before), goodness(self.direction, self.after)
        if before is None or after is None or abs(after - before) < 1e-12:
            return "same"
        return "better" if after > before else "worse"


def split_stages(metrics: dict) -> dict[str, dict[str, float]]:
    """{"before": {...}, "after": {...}} (either may be missing); a flat {name: value} dict is one "value" stage."""
    stages = {k: metrics[k] for k in ("before", "after") if isinstance(metrics.get(k), dict)}
    return stages or {"value": {k: v for k, v in metrics.items() if isinstance(v, (int, float))}}


def metric_rows(metrics: dict) -> list[MetricRow]:
    """One row per metric name, groups in order of first appearance, the unqualified name first;
    directions from the file's "directions" (none: unknown)."""
    stages = split_stages(metrics)
    directions = metrics.get("directions") if isinstance(metrics.get("directions"), dict) else {}
    names = list(dict.fromkeys(name for values in stages.values() for name in values))
    groups = list(dict.fromkeys(n.split("@", 1)[0] for n in names))
    rows = []
    for group in groups:
        members = [n for n in names if n.split("@", 1)[0] == group]
        members.sort(key=lambda n: "@" in n)  # stable: keeps the file's order of subsets
        for name in members:
            rows.append(MetricRow(name, group, name.split("@", 1)[1] if "@" in name else "",
                                  {stage: _number(values.get(name)) for stage, values in stages.items()},
                                  directions.get(name)))
    return rows


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "—"
    if not math.isfinite(value):
        return str(value)
    if not signed and 0 < abs(value) < 5e-4:  # a small value, e.g. TOFU's forget quality (a p-value): 2.1e-05
        text = f"{value:.2g}"
        return "−" + text[1:] if text.startswith("-") else text
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


ORIGINAL = "original"  # the leaderboard's row and point of the model before unlearning


def original_value(before: dict, name: str) -> float | None:
    """The original model's value of a metric; a `*_to_original` metric compares it with itself."""
    if name.split("@")[0].endswith("_to_original"):
        return 1.0
    value = before.get(name)
    return float(value) if isinstance(value, (int, float)) else None


def board_goodness(board: dict, name: str, value: float | None) -> float | None:
    """`goodness` by a leaderboard's directions. A column whose task declares none (one named by
    --forget-metric / --utility-metric, e.g. answer_nll@holdout) counts as lower-is-better when it is
    a forget column and higher-is-better when it is a utility column."""
    direction = board["directions"].get(name)
    if direction is None:
        direction = "lower" if name in board["forget_metrics"] else "higher"
    return goodness(direction, value)
