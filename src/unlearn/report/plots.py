"""The report's figures, each rendered to PNG bytes.

Figures are built with `matplotlib.figure.Figure` (the Agg renderer, no pyplot), so making a report
never touches global plotting state or needs a display. Figures are sized so that one inch shows
as 100 CSS pixels in the HTML report: a 10 pt label reads like 14 px text.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass

import matplotlib
from matplotlib.figure import Figure

from unlearn.report.metrics import MetricRow, arrow, fmt

FULL_WIDTH = 10.4  # inches; the report's content column is 1040 px
DPI = 160
BEFORE, AFTER = "#9ca3af", "#2563eb"
SELECTED = "#d97706"
# line colours avoid red and green, which the metrics table uses for "worse" and "better"
SERIES = ("#2563eb", "#0d9488", "#7c3aed", "#db2777", "#4b5563", "#92400e", "#0891b2")
STYLE = {
    "font.size": 9.5, "axes.titlesize": 10.5, "axes.titleweight": "bold", "axes.titlelocation": "left",
    "axes.labelsize": 9.5, "axes.labelcolor": "#374151", "axes.edgecolor": "#d1d5db",
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "axes.axisbelow": True,
    "grid.color": "#eef0f3", "grid.linewidth": 0.8, "xtick.color": "#4b5563", "ytick.color": "#4b5563",
    "legend.frameon": False, "legend.fontsize": 9, "figure.facecolor": "white",
}

TRAINING_CURVES = {  # log key -> panel title
    "forget_nll": "Forget NLL",
    "mismatch_nll": "Mismatch NLL",
    "normal_nll": "Normal NLL",
    "kl": "KL to original (normal data)",
}


@dataclass(frozen=True)
class Plot:
    name: str  # file stem under plots/
    title: str
    png: bytes
    width_in: float  # shown at 100 px per inch


def _render(figure: Figure, name: str, title: str) -> Plot:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return Plot(name, title, buffer.getvalue(), figure.get_figwidth())


def _grid(count: int, max_columns: int) -> tuple[int, int]:
    """(rows, columns) for `count` panels; four panels in a three-wide layout make a square, not 3 + 1."""
    columns = 2 if count == 4 and max_columns == 3 else min(count, max_columns)
    return math.ceil(count / columns), columns


def _mark_steps(ax, marks: dict[str, int], legend: bool = True) -> None:
    """Dashed vertical lines at named steps; a step outside the plotted ones (a summary from another
    attempt) is left out rather than stretching the axis."""
    low, high = ax.dataLim.intervalx
    for label, step in marks.items():
        if not low <= step <= high:
            continue
        ax.axvline(step, color=SELECTED if label.startswith("selected") else "#6b7280",
                   linestyle="--", linewidth=1.1, zorder=1, label=label if legend else None)


def metric_bars(rows: list[MetricRow], stages: list[str]) -> Plot | None:
    """Small multiples: one panel per metric group, a bar per stage (before, after) for each subset."""
    groups = list(dict.fromkeys(r.group for r in rows))
    if not groups or not stages:
        return None
    nrows, ncols = _grid(len(groups), 4)
    width = 0.8 / len(stages)
    with matplotlib.rc_context(STYLE):
        figure = Figure(figsize=(min(FULL_WIDTH, 2.6 * ncols + 0.4), 2.35 * nrows + 0.45), layout="constrained")
        figure.get_layout_engine().set(hspace=0.12)
        axes = figure.subplots(nrows, ncols, squeeze=False).ravel()
        for ax, group in zip(axes, groups):
            members = [r for r in rows if r.group == group]
            shown = []
            for i, stage in enumerate(stages):
                values = [r.values.get(stage) for r in members]
                values = [v if v is not None else math.nan for v in values]
                offset = (i - (len(stages) - 1) / 2) * width
                bars = ax.bar([x + offset for x in range(len(members))], values, width,
                              color=BEFORE if stage == "before" else AFTER, label=stage)
                ax.bar_label(bars, labels=[fmt(v) if math.isfinite(v) else "" for v in values], fontsize=7.5,
                             padding=2, color="#374151")
                shown += [v for v in values if math.isfinite(v)]
            directions = {r.direction for r in members}  # one arrow when every subset agrees
            ax.set_title(f"{group} {arrow(directions.pop()) if len(directions) == 1 else ''}".strip(), fontsize=9.5)
            ax.set_xticks(range(len(members)), [r.subset or "all" for r in members] if len(members) > 1 else [""])
            ax.tick_params(axis="x", length=0)
            ax.grid(axis="x", visible=False)
            ax.set_xlim(-0.9, len(members) - 0.1)  # a lone group of bars stays narrow
            if shown and min(shown) >= 0 and max(shown) > 0:
                ax.set_ylim(0, max(shown) * 1.2)  # room for the value labels
        for ax in axes[len(groups):]:
            ax.set_visible(False)
        if len(stages) > 1:
            figure.legend(handles=axes[0].containers, loc="outside upper right", ncols=len(stages))
        title = "Metrics per group" + (" before and after unlearning" if len(stages) > 1 else "")
        return _render(figure, "metrics", title)


def _step_panels(count: int, row_height: float):
    """A full-width figure of up to three panels a row sharing the step axis (call inside STYLE)."""
    nrows, ncols = _grid(count, 3)
    figure = Figure(figsize=(FULL_WIDTH, row_height * nrows), layout="constrained")
    figure.get_layout_engine().set(hspace=0.08)
    return figure, figure.subplots(nrows, ncols, squeeze=False, sharex=True).ravel()


def training_curves(rows: list[dict], marks: dict[str, int]) -> Plot | None:
    """Forget / mismatch / normal NLL and KL over steps, one panel each (their scales differ a lot)."""
    keys = [k for k in TRAINING_CURVES if any(_finite(r.get(k)) for r in rows)]
    if not keys:
        return None
    with matplotlib.rc_context(STYLE):
        figure, axes = _step_panels(len(keys), 2.8)
        for ax, key, colour in zip(axes, keys, SERIES):
            _line(ax, *_series(rows, key), colour, 1.6)
            _mark_steps(ax, marks)
            ax.set_title(TRAINING_CURVES[key])
            if ax.get_subplotspec().is_last_row():
                ax.set_xlabel("step")
        for ax in axes[len(keys):]:
            ax.set_visible(False)
        if axes[0].get_legend_handles_labels()[0]:  # a marked step
            axes[0].legend(loc="best")
        return _render(figure, "training", "Training curves")


def loss_terms(rows: list[dict], marks: dict[str, int]) -> Plot | None:
    """The total loss and each weighted objective term, on one axis: which term drives the update."""
    keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k == "loss" or k.startswith("loss_")]
    keys = [k for k in keys if any(_finite(r.get(k)) for r in rows)]
    if not keys:
        return None
    with matplotlib.rc_context(STYLE):
        figure = Figure(figsize=(FULL_WIDTH, 2.9), layout="constrained")
        ax = figure.subplots()
        for key, colour in zip(keys, ("#111827", *SERIES)):
            _line(ax, *_series(rows, key), colour, 2.0 if key == "loss" else 1.3,
                  label="total" if key == "loss" else key.removeprefix("loss_"))
        _mark_steps(ax, marks)
        ax.axhline(0, color="#9ca3af", linewidth=0.8)
        ax.set_title("Weighted objective terms")
        ax.set_xlabel("step")
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5))
        return _render(figure, "loss_terms", "Loss and its weighted terms")


def validation_trajectory(rows: list[dict], selected: int | None, directions: dict) -> Plot | None:
    """Validation metrics over steps, lower-is-better beside higher-is-better ones (and the selection
    score), with the selected step marked on every line."""
    names = [k for k in dict.fromkeys(k for r in rows for k in r)
             if k not in ("step", "validation", "seconds") and any(_finite(r.get(k)) for r in rows)]
    panels = {"Lower is better": [n for n in names if directions.get(n) == "lower"],
              "Higher is better": [n for n in names if directions.get(n) == "higher"],
              "Other": [n for n in names if directions.get(n) not in ("lower", "higher") and n != "score"],
              "Selection score (maximised)": [n for n in names if n == "score"]}
    panels = {title: members for title, members in panels.items() if members}
    if not panels:
        return None
    with matplotlib.rc_context(STYLE):
        figure, axes = _step_panels(len(panels), 3.0)
        colours = iter(SERIES * 4)
        for ax, (title, members) in zip(axes, panels.items()):
            for name in members:
                steps, values = _series(rows, name)
                ax.plot(steps, values, color=next(colours), linewidth=1.6, marker="o", markersize=3.5, label=name)
                if selected in steps:
                    ax.plot([selected], [values[steps.index(selected)]], marker="o", markersize=9,
                            markerfacecolor="none", markeredgecolor=SELECTED, markeredgewidth=2, zorder=5)
            if selected is not None:
                _mark_steps(ax, {f"selected step {selected}": selected}, legend=ax is axes[0])
            ax.set_title(title)
            if ax.get_subplotspec().is_last_row():
                ax.set_xlabel("step")
            ax.legend(loc="best", fontsize=8.5)
        for ax in axes[len(panels):]:
            ax.set_visible(False)
        return _render(figure, "validation", "Validation during training")


def _line(ax, steps: list[int], values: list[float], colour: str, width: float, label: str | None = None) -> None:
    """Few points: a line with markers. Many (noisy per-step losses): the raw values faint, a moving
    average drawn over them."""
    if len(values) <= 60:
        ax.plot(steps, values, color=colour, linewidth=width, marker="o" if len(values) <= 30 else None,
                markersize=3, label=label)
        return
    ax.plot(steps, values, color=colour, linewidth=0.8, alpha=0.25)
    window = max(5, len(values) // 25)
    smooth = [sum(values[max(0, i - window + 1):i + 1]) / len(values[max(0, i - window + 1):i + 1])
              for i in range(len(values))]
    ax.plot(steps, smooth, color=colour, linewidth=width, label=label)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in rows if "step" in r and _finite(r.get(key))]
    return [p[0] for p in points], [p[1] for p in points]
