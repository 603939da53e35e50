"""report.md: the same sections as report.html, with plots linked from plots/*.png."""
from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING

from unlearn.report.metrics import arrow, fmt

if TYPE_CHECKING:
    from unlearn.report.content import Report

MARK = {"better": " ✓", "worse": " ✗", "same": ""}


def render_markdown(report: Report, plots_dir: str) -> str:
    out = ["# Unlearning report", "", f"{cell(report.title)} · `{report.folder.resolve()}`", ""]
    out += facts(report)
    if report.metrics:
        out += ["## Before and after unlearning" if report.metric_stages == ["before", "after"] else "## Metrics", ""]
        out += metrics(report) + [""] + image(report, "metrics", plots_dir)

    training = image(report, "training", plots_dir) + image(report, "loss_terms", plots_dir)
    if training or report.timing:
        out += ["## Training", ""] + training
        if report.timing:
            out += ["Time: " + " · ".join(f"{phase} {value}" for phase, value in report.timing), ""]

    if report.onpolicy:
        from unlearn.report.content import ONPOLICY_COLUMNS, ONPOLICY_NOTE

        out += ["## On-policy negatives", "", ONPOLICY_NOTE, ""]
        out += table(list(ONPOLICY_COLUMNS), report.onpolicy, numeric_from=0) + [""]

    validation = image(report, "validation", plots_dir)
    if validation:
        out += ["## Validation", ""] + validation + ([cell(report.selection), ""] if report.selection else [])
        if report.validation:
            out += table(report.validation_columns, report.validation, numeric_from=0) + [""]

    if report.examples:
        out += ["## Example generations", ""]
        for group in report.examples:
            out += [f"### {cell(' · '.join(x for x in (group.task, group.subset) if x) or 'examples')}", ""]
            rows = [[cell(ex.prompt), *(_output(ex.outputs.get(s)) for s in report.example_stages)]
                    for ex in group.examples]
            out += table(["prompt", *report.example_stages], rows) + [""]

    if report.settings or report.config_text:
        out += ["## Configuration", ""]
        if report.settings:
            out += settings(report) + [""]
        if report.config_text:
            out += ["<details><summary>Full resolved config (config.yaml)</summary>", "", "```yaml",
                    report.config_text.rstrip().replace("```", "ʼʼʼ"), "```", "", "</details>", ""]
    return "\n".join(out).rstrip() + "\n"


def facts(report: Report) -> list[str]:
    """The header's facts as a list, then the warnings."""
    out = [f"- **{label}:** {cell(value)}" + (f" ({cell(note)})" if note else "")
           for label, value, note in report.facts] + ([""] if report.facts else [])
    return out + [f"> **Warning:** {cell(w)}" for w in report.warnings] + ([""] if report.warnings else [])


def metrics(report: Report) -> list[str]:
    """The metrics table: one row per metric, before / after / change when both stages were evaluated."""
    stages = report.metric_stages
    paired = stages == ["before", "after"]
    rows = [[cell(row.name), arrow(row.direction), *(fmt(row.values[s]) for s in stages),
             *([fmt(row.delta, signed=True) + MARK[row.verdict]] if paired else [])] for row in report.metrics]
    out = table(["metric", "", *stages, *(["change"] if paired else [])], rows, numeric_from=2)
    legend = "↑ higher is better, ↓ lower is better, →x: x is ideal; ✓ the change helps, ✗ it hurts."
    return out + (["", legend] if paired else [])


def settings(report: Report) -> list[str]:
    return table(["setting", "value"], [[cell(k), cell(v)] for k, v in report.settings])


def cell(text: str) -> str:
    """Arbitrary text as one table cell: HTML-escaped (Markdown renders inline HTML), one line, no bare pipes."""
    return escape(str(text), quote=False).replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


def _output(text: str | None) -> str:
    if text is None:
        return "*(not generated)*"
    return cell(text) if text else "*(empty)*"


def table(header: list[str], rows: list[list[str]], numeric_from: int | None = None) -> list[str]:
    align = ["---:" if numeric_from is not None and i >= numeric_from else "---" for i in range(len(header))]
    return ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |",
            *("| " + " | ".join(row) + " |" for row in rows)]


def image(report: Report, name: str, plots_dir: str) -> list[str]:
    plot = report.plot(name)
    return [f"![{plot.title}]({plots_dir}/{plot.name}.png)", ""] if plot else []
