"""report.html: one self-contained page (inline CSS, plots as base64 PNG). Every value read from a
run's files is escaped, since generations and prompts are arbitrary text."""
from __future__ import annotations

import base64
from html import escape
from typing import TYPE_CHECKING

from unlearn.report.metrics import arrow, explain, fmt

if TYPE_CHECKING:
    from unlearn.report.content import Report
    from unlearn.report.plots import Plot

CSS = """
:root { --ink:#111827; --muted:#6b7280; --line:#e5e7eb; --bg:#f5f6f8; --card:#fff; --accent:#2563eb;
        --good:#15803d; --good-bg:#dcfce7; --bad:#b91c1c; --bad-bg:#fee2e2; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink); line-height: 1.5;
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 32px 24px 48px; }
header h1 { font-size: 26px; margin: 0 0 2px; letter-spacing: -0.01em; }
header .folder { color: var(--muted); font-size: 13px; margin: 0 0 18px; word-break: break-all; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 10px;
          padding: 20px 24px; margin: 18px 0; }
h2 { font-size: 18px; margin: 0 0 14px; }
h3 { font-size: 14px; margin: 22px 0 8px; color: #374151; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { flex: 1 1 140px; max-width: 340px; background: var(--card); border: 1px solid var(--line);
        border-radius: 10px; padding: 12px 14px; }
.card .label { font-size: 11.5px; text-transform: uppercase; letter-spacing: .05em; color: var(--muted); }
.card.wide { flex: 2.2 1 300px; max-width: 560px; }
.card .value { font-size: 17px; font-weight: 600; margin-top: 2px; overflow-wrap: anywhere; }
.card .note { font-size: 13px; color: var(--muted); margin-top: 2px; overflow-wrap: anywhere; }
.warning { background: #fff7ed; border: 1px solid #fdba74; color: #9a3412; border-radius: 10px;
           padding: 12px 16px; margin-top: 14px; }
.settings { display: grid; grid-template-columns: max-content 1fr; gap: 4px 24px; margin: 0; font-size: 14px; }
.settings dt { color: var(--muted); }
.settings dd { margin: 0; overflow-wrap: anywhere; }
.note { color: var(--muted); font-size: 13.5px; margin: 10px 0 0; }
table { border-collapse: collapse; width: 100%; font-size: 14px; }
th { text-align: left; font-size: 11.5px; text-transform: uppercase; letter-spacing: .05em; color: var(--muted);
     font-weight: 600; border-bottom: 1px solid var(--line); padding: 6px 10px; }
td { padding: 6px 10px; border-bottom: 1px solid #f0f1f3; vertical-align: top; }
table.metrics { width: auto; }
table.metrics td:first-child { min-width: 280px; }
table.metrics td.num, table.metrics th.num { text-align: right; font-variant-numeric: tabular-nums;
                                             padding-left: 22px; }
table.metrics tr.first td { border-top: 1px solid var(--line); }
table.metrics .subset { color: var(--muted); }
table.metrics .dir { color: var(--muted); text-align: center; }
.delta { display: inline-block; min-width: 64px; padding: 1px 8px; border-radius: 999px; text-align: right; }
.delta.better { color: var(--good); background: var(--good-bg); }
.delta.worse { color: var(--bad); background: var(--bad-bg); }
.delta.same { color: var(--muted); }
figure { margin: 18px 0 4px; }
figure img { display: block; max-width: 100%; height: auto; }
table.examples { table-layout: fixed; }
table.examples td { font-size: 13.5px; white-space: pre-wrap; overflow-wrap: anywhere; }
table.examples td.prompt { color: #374151; background: #f9fafb; }
.empty { color: var(--muted); font-style: italic; }
details summary { cursor: pointer; color: var(--accent); font-size: 14px; margin-top: 14px; }
pre { background: #f9fafb; border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px;
      font-size: 12.5px; overflow-x: auto; }
footer { color: var(--muted); font-size: 12.5px; text-align: center; }
"""


def render_html(report: Report) -> str:
    sections = [_header(report), _metrics(report), _training(report), _onpolicy(report), _validation(report),
                _examples(report), _config(report)]
    body = "\n".join(s for s in sections if s)
    return (f'<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>Unlearning report: {escape(report.title)}</title>\n<style>{CSS}</style>\n</head>\n"
            f"<body>\n<main>\n{body}\n<footer>Written by <code>unlearn report</code>.</footer>\n"
            f"</main>\n</body>\n</html>\n")


def _header(report: Report) -> str:
    cards = "".join(f'<div class="card{" wide" if len(value) > 16 or len(note) > 32 else ""}">'
                    f'<div class="label">{escape(label)}</div><div class="value">{escape(value)}</div>'
                    + (f'<div class="note">{escape(note)}</div>' if note else "") + "</div>"
                    for label, value, note in report.facts)
    warnings = "".join(f'<div class="warning">{escape(w)}</div>' for w in report.warnings)
    return (f"<header>\n<h1>Unlearning report</h1>\n"
            f'<p class="folder">{escape(report.title)} &middot; {escape(str(report.folder.resolve()))}</p>\n'
            + (f'<div class="cards">{cards}</div>\n' if cards else "") + warnings + "</header>")


def _metrics(report: Report) -> str:
    if not report.metrics:
        return ""
    stages = report.metric_stages
    paired = stages == ["before", "after"]
    head = "".join(f'<th class="num">{s}</th>' for s in stages) + ('<th class="num">change</th>' if paired else "")
    rows, last_group = [], None
    for row in report.metrics:
        first = row.group != last_group
        last_group = row.group
        name = (f"<b>{escape(row.group)}</b>" if first else "") + (
            f' <span class="subset">@{escape(row.subset)}</span>' if row.subset else "")
        tip = explain(row.direction)
        cells = [f"<td>{name}</td>", f'<td class="dir" title="{tip}">{arrow(row.direction)}</td>']
        cells += [f'<td class="num">{fmt(row.values[s])}</td>' for s in stages]
        if paired:
            cells.append(f'<td class="num"><span class="delta {row.verdict}">{fmt(row.delta, signed=True)}</span></td>')
        rows.append(f'<tr class="{"first" if first else ""}">{"".join(cells)}</tr>')
    table = (f'<table class="metrics"><thead><tr><th>metric</th><th></th>{head}</tr></thead>'
             f"<tbody>{''.join(rows)}</tbody></table>")
    legend = ('<p class="note">↑ higher is better, ↓ lower is better; changes are green where they help and '
              "red where they hurt.</p>" if paired else "")
    return _section("Before and after unlearning" if paired else "Metrics",
                    table + legend + _figure(report.plot("metrics")))


def _training(report: Report) -> str:
    figures = _figure(report.plot("training"))
    if figures:
        figures += ('<p class="note">Forget NLL rises as the unwanted answers are unlearned; normal NLL and the KL '
                    "to the original model show what the rest of the model pays for it.</p>")
    figures += _figure(report.plot("loss_terms"))
    timing = " &middot; ".join(f"{escape(phase)} {escape(value)}" for phase, value in report.timing)
    if not figures and not timing:
        return ""
    return _section("Training", figures + (f'<p class="note">Time: {timing}</p>' if timing else ""))


def _onpolicy(report: Report) -> str:
    if not report.onpolicy:
        return ""
    from unlearn.report.content import ONPOLICY_COLUMNS, ONPOLICY_NOTE

    head = "".join(f'<th class="num">{escape(c)}</th>' for c in ONPOLICY_COLUMNS)
    rows = "".join("<tr>" + "".join(f'<td class="num">{escape(c)}</td>' for c in cells) + "</tr>"
                   for cells in report.onpolicy)
    return _section("On-policy negatives", f'<table class="metrics"><thead><tr>{head}</tr></thead>'
                                           f'<tbody>{rows}</tbody></table><p class="note">{escape(ONPOLICY_NOTE)}</p>')


def _validation(report: Report) -> str:
    figure = _figure(report.plot("validation"))
    if not figure:
        return ""
    note = f'<p class="note">{escape(report.selection)}</p>' if report.selection else ""
    table = ""
    if report.validation:
        head = "".join(f'<th class="num">{escape(c)}</th>' for c in report.validation_columns)
        rows = "".join("<tr>" + "".join(f'<td class="num">{escape(c)}</td>' for c in cells) + "</tr>"
                       for cells in report.validation)
        table = f'<table class="metrics"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'
    return _section("Validation", figure + note + table)


def _examples(report: Report) -> str:
    if not report.examples:
        return ""
    stages = report.example_stages
    cols = '<col style="width:26%">' + f'<col style="width:{74 / len(stages):.1f}%">' * len(stages)
    parts = []
    for group in report.examples:
        title = " · ".join(escape(x) for x in (group.task, group.subset) if x) or "examples"
        rows = []
        for example in group.examples:
            cells = [f'<td class="prompt">{escape(example.prompt)}</td>']
            for stage in stages:
                output = example.outputs.get(stage)
                cells.append(f"<td>{escape(output)}</td>" if output else
                             f'<td class="empty">{"(empty)" if output == "" else "(not generated)"}</td>')
            rows.append(f"<tr>{''.join(cells)}</tr>")
        head = "<th>prompt</th>" + "".join(f"<th>{escape(s)}</th>" for s in stages)
        parts.append(f'<h3>{title}</h3><table class="examples"><colgroup>{cols}</colgroup>'
                     f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")
    return _section("Example generations", "".join(parts))


def _config(report: Report) -> str:
    if not report.settings and not report.config_text:
        return ""
    settings = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in report.settings)
    body = f'<dl class="settings">{settings}</dl>' if settings else ""
    if report.config_text:
        body += (f"<details><summary>Full resolved config (config.yaml)</summary>"
                 f"<pre>{escape(report.config_text)}</pre></details>")
    return _section("Configuration", body)


def _section(title: str, body: str) -> str:
    return f"<section>\n<h2>{escape(title)}</h2>\n{body}\n</section>"


def _figure(plot: Plot | None) -> str:
    if plot is None:
        return ""
    data = base64.b64encode(plot.png).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{escape(plot.title)}" '
            f'style="width:{plot.width_in * 100:.0f}px"></figure>')
