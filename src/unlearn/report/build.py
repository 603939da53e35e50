"""`unlearn report DIR`: read what a run folder holds, write report.html and report.md.

Every input is optional (a run killed mid-training has a log but no metrics; `unlearn eval` has
metrics but no log): a section whose file is missing is left out. report.html is one self-contained
file (plots inlined as base64 PNG); report.md links the same plots saved under plots/.
"""
from __future__ import annotations

import json
import logging
import re
from itertools import zip_longest
from pathlib import Path

import yaml

from unlearn.io import atomic_dir, atomic_write_text, read_jsonl
from unlearn.layout import RunFolder
from unlearn.report import plots
from unlearn.report.html_page import render_html
from unlearn.report.markdown_page import render_markdown
from unlearn.report.content import Example, ExampleGroup, Fact, Report, duration
from unlearn.report.metrics import fmt, metric_rows, metrics_table, split_stages

__all__ = ["build_report", "duration", "metrics_table", "load_report"]

log = logging.getLogger(__name__)

EXAMPLES_PER_SUBSET = 3
PROMPT_CHARS, OUTPUT_CHARS = 240, 360
UNREMARKABLE = {"grad_accum": 1, "warmup_steps": 0}  # train settings not worth a line at these values


def build_report(output_dir: str | Path) -> list[Path]:
    """Write report.html, report.md and plots/*.png for a run folder; return the paths written."""
    folder = RunFolder(output_dir)
    report = load_report(folder.root)
    html_path = atomic_write_text(folder.report_html, render_html(report))
    with atomic_dir(folder.plots) as plots_dir:  # replaces stale plots from an earlier build
        for plot in report.plots:
            (plots_dir / f"{plot.name}.png").write_bytes(plot.png)
    md_path = atomic_write_text(folder.report_md, render_markdown(report, plots_dir=folder.plots.name))
    return [html_path, md_path, *(folder.plots / f"{p.name}.png" for p in report.plots)]


def load_report(output_dir: Path, draw: bool = True) -> Report:
    """What a run folder holds, read and paired; `draw` False leaves out the plots (a model card has none)."""
    folder = RunFolder(output_dir)
    if not folder.root.is_dir():
        raise FileNotFoundError(f"{output_dir}: not a folder")
    inputs = (folder.config, folder.summary, folder.train_log, folder.metrics, folder.generations)
    if not any(path.exists() for path in inputs):
        raise FileNotFoundError(f"{output_dir}: nothing to report on (none of {', '.join(p.name for p in inputs)})")
    config_text = _read_text(folder.config)
    config = _parse(config_text, yaml.safe_load, folder.config) if config_text else None
    config = config if isinstance(config, dict) else {}
    summary = _read_json(folder.summary) or {}
    metrics = _read_json(folder.metrics) or {}
    validated = _read_json(RunFolder(folder.validation).metrics) or {}  # select: evaluates into validation/
    validation_directions = validated.get("directions") if isinstance(validated.get("directions"), dict) else {}
    log_rows = [r for r in read_jsonl(folder.train_log) if isinstance(r, dict)]
    train_rows = [r for r in log_rows if not r.get("validation") and not r.get("kind")]
    validation_rows = [r for r in log_rows if r.get("validation")]
    onpolicy_rows = [r for r in log_rows if r.get("kind") == "onpolicy"]
    generations = [r for r in read_jsonl(folder.generations) if isinstance(r, dict)]

    model = _get(config, "model", "name") or next((g["model"] for g in generations if g.get("model")), None)
    method = summary.get("method") or _get(config, "method", "name")
    report = Report(output_dir, " · ".join(str(x) for x in (method, model) if x) or output_dir.name)
    report.config_text = config_text
    selection = summary.get("selection") if isinstance(summary.get("selection"), dict) else {}
    _summarise(report, summary, config, model, method, selection)
    report.settings = _settings(config, summary)

    selected = selection.get("best_step")
    marks = {f"selected step {selected}": selected} if selected is not None else {}
    if summary.get("restored_step") is not None:
        marks[f"restored to step {summary['restored_step']}"] = summary["restored_step"]

    if metrics:
        report.metrics = metric_rows(metrics)
        report.metric_stages = list(split_stages(metrics))
    report.onpolicy = [_round_cells(r) for r in onpolicy_rows]
    report.validation_columns, report.validation = _validation_table(validation_rows, _get(config, "select"), selected)
    report.examples, report.example_stages = _examples(generations)
    if draw:
        report.plots = [p for p in (plots.metric_bars(report.metrics, report.metric_stages),
                                    plots.training_curves(train_rows, marks),
                                    plots.loss_terms(train_rows, marks),
                                    plots.validation_trajectory(validation_rows, selected, validation_directions))
                        if p is not None]
    return report


def _summarise(report: Report, summary: dict, config: dict, model, method, selection: dict) -> None:
    if method:
        report.facts.append(Fact("Method", str(method)))
    if model:
        lora = _get(config, "model", "lora")
        tuning = f"LoRA r={lora.get('r')}" if isinstance(lora, dict) else "full fine-tune" if config else ""
        shown = str(model) if str(model).count("/") <= 1 else "…/" + Path(str(model)).name  # the header has it whole
        report.facts.append(Fact("Model", shown, tuning))
    max_steps = summary.get("max_steps") or _get(config, "train", "max_steps")
    if summary.get("steps") is not None:
        report.facts.append(Fact("Steps", f"{summary['steps']} / {max_steps}" if max_steps else str(summary["steps"]),
                                 f"stopped: {summary['stop_reason']}" if summary.get("stop_reason") else ""))
    if summary.get("total_seconds") is not None:
        train = summary.get("train_seconds")
        report.facts.append(Fact("Wall time", duration(summary["total_seconds"]),
                                 f"training {duration(train)}" if isinstance(train, (int, float)) else ""))
    if selection.get("best_step") is not None:
        score = selection.get("score")
        score = f"score {score:.4g}" if isinstance(score, (int, float)) else ""
        report.facts.append(Fact("Selected step", str(selection["best_step"]), score))
        report.selection = (f"Selected step {selection['best_step']}" + (f" ({score})" if score else "")
                            + (f": {selection['reason']}" if selection.get("reason") else ""))
    if summary.get("diverged"):
        reason, restored = str(summary.get("stop_reason") or ""), summary.get("restored_step")
        reason = reason[:1].upper() + reason[1:] if "diverged" in reason else f"Training diverged ({reason})"
        report.warnings.append(f"{reason}. " + (f"The weights were restored to step {restored}." if restored is not None
                                                else "No earlier checkpoint was restored."))
    wall = summary.get("wall_seconds")
    if isinstance(wall, dict):
        report.timing = [(phase.replace("_", " "), duration(seconds)) for phase, seconds in wall.items()
                         if isinstance(seconds, (int, float))]


def _settings(config: dict, summary: dict) -> list[tuple[str, str]]:
    """The handful of config values a reader needs to judge a run; the full file is shown below them."""
    out = []
    weights = summary.get("weights") or _get(config, "method", "weights")
    if isinstance(weights, dict):
        out.append(("objective weights", ", ".join(f"{k} {v:g}" if isinstance(v, (int, float)) else f"{k} {v}"
                                                    for k, v in weights.items())))
    lora = _get(config, "model", "lora")
    if _get(config, "model"):
        tuning = (f"LoRA r={lora.get('r')}, alpha={lora.get('alpha')}" if isinstance(lora, dict) else "full fine-tune")
        out.append(("tuning", f"{tuning}, {_get(config, 'model', 'dtype') or 'float32'}"))
    train = _get(config, "train") or {}
    for key, label in (("lr", "learning rate"), ("batch_size", "batch size"), ("grad_accum", "gradient accumulation"),
                       ("max_steps", "max steps"), ("warmup_steps", "warmup steps"), ("max_kl", "max KL"),
                       ("stop_forget_nll", "stop at forget NLL"), ("seed", "seed")):
        if train.get(key) is not None and train[key] != UNREMARKABLE.get(key):
            out.append((label, f"{train[key]:g}" if isinstance(train[key], float) else str(train[key])))
    data = _get(config, "data") or {}
    sizes = summary.get("data") if isinstance(summary.get("data"), dict) else {}
    for key in ("forget", "normal"):
        sources = data.get(key)
        sources = sources if isinstance(sources, list) else [sources] if sources else []
        rows = sizes.get(key) if isinstance(sizes.get(key), list) else []  # rows trained on, per source
        names = [_source_label(s) + (f" ({count} rows)" if isinstance(count, int) else "")
                 for s, count in zip_longest(sources, rows) if isinstance(s, dict)]
        if names:
            out.append((f"{key} data", ", ".join(names)))
    if _get(config, "output", "save"):
        out.append(("saved as", str(_get(config, "output", "save"))))
    return out


def _source_label(source: dict) -> str:
    """A data source as the report names it: the file's name, or the data set (a local folder by its name)."""
    if source.get("path"):
        return Path(str(source["path"])).name
    name = str(source.get("dataset"))
    name = Path(name).name if Path(name).is_absolute() else name
    return name + (f"[{source['split']}]" if source.get("split") else "")


def _validation_table(rows: list[dict], select: dict | None, selected: int | None,
                      most: int = 6) -> tuple[list[str], list[list[str]]]:
    """The validation trajectory as a table: the metrics the selection rules name first, then other
    role-qualified metrics up to `most`; the score, eligibility, and the selected step marked."""
    if not rows:
        return [], []
    rules = " ".join(str(v) for k, v in (select or {}).items() if k in ("score", "constraint", "stop_when") and v)
    names = [k for k in dict.fromkeys(k for r in rows for k in r) if "@" in k]
    named = [n for n in names if re.search(rf"(?<![\w@.]){re.escape(n)}(?![\w@])", rules)]
    columns = (named + [n for n in names if n not in named])[:max(most, len(named))]
    table_rows = []
    for row in rows:
        cells = [str(row.get("step", ""))] + [fmt(row.get(n)) for n in columns]
        cells += [fmt(row.get("score")), "yes" if row.get("eligible") else "no",
                  "◀ selected" if selected is not None and row.get("step") == selected else ""]
        table_rows.append(cells)
    return ["step", *columns, "score", "eligible", ""], table_rows


def _round_cells(row: dict) -> list[str]:
    """An on-policy round of train_log.jsonl as table cells (see training/onpolicy.py)."""
    share = row.get("flagged_share")
    values = (row.get("round"), row.get("step"), row.get("samples"), row.get("flagged"),
              f"{share:.2f}" if isinstance(share, (int, float)) else None, row.get("negatives"))
    return ["" if v is None else str(v) for v in values]


def _examples(generations: list[dict]) -> tuple[list[ExampleGroup], list[str]]:
    """Pair before/after outputs by (task, subset, prompt); keep a few per subset, both stages first."""
    generations = [g for g in generations if "prompt" in g]
    found = list(dict.fromkeys(str(g.get("stage") or "output") for g in generations))
    stages = [s for s in ("before", "after") if s in found] + [s for s in found if s not in ("before", "after")]
    pairs: dict[tuple, dict[str, str]] = {}
    for row in generations:
        key = (str(row.get("task", "")), str(row.get("subset", "")), str(row["prompt"]))
        pairs.setdefault(key, {})[str(row.get("stage") or "output")] = str(row.get("output", ""))
    groups: dict[tuple[str, str], list[tuple[str, dict]]] = {}
    for (task, subset, prompt), outputs in pairs.items():
        groups.setdefault((task, subset), []).append((prompt, outputs))
    out = []
    for (task, subset), items in groups.items():
        items.sort(key=lambda item: -sum(s in item[1] for s in stages))  # complete pairs first, else file order
        examples = [Example(truncate(prompt, PROMPT_CHARS),
                            {s: truncate(outputs[s], OUTPUT_CHARS) if s in outputs else None for s in stages})
                    for prompt, outputs in items[:EXAMPLES_PER_SUBSET]]
        out.append(ExampleGroup(task, subset, examples))
    return out, stages


def truncate(text: str, limit: int) -> str:
    text = text.strip()
    if len(text) <= limit:
        return text
    cut = text[:limit]
    space = cut.rfind(" ")
    return (cut[:space] if space > limit * 0.8 else cut).rstrip() + " …"  # end on a word where one is near


def _get(config: dict, *keys):
    node = config
    for key in keys:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def _read_text(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.is_file() else None


def _read_json(path: Path) -> dict | None:
    text = _read_text(path)
    data = _parse(text, json.loads, path) if text else None
    if data is not None and not isinstance(data, dict):
        log.warning("%s: expected a JSON object; its section is left out", path)
        return None
    return data


def _parse(text: str, parse, path: Path):
    """A damaged file loses its section, not the whole report."""
    try:
        return parse(text)
    except (ValueError, yaml.YAMLError) as exc:
        log.warning("%s: cannot be read (%s); its section is left out", path, str(exc).splitlines()[0])
        return None
