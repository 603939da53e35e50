"""`unlearn compare`: several methods on the same data, budget and `eval:` section -> a leaderboard.

Each method is one `unlearn run` into OUTPUT_DIR/<method>/ (its own model, metrics and report).
OUTPUT_DIR then gets leaderboard.json, leaderboard.md and frontier.png: forget efficacy against
utility, one point per method plus the original model. A method that fails is recorded in its row
and the others still run.
"""
from __future__ import annotations

import io
import json
import logging
import math
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure

from unlearn.config import ConfigError, MethodConfig, RunConfig, load_config
from unlearn.evaluation.config import EvalConfig, parse_eval_config
from unlearn.io import atomic_write_json, atomic_write_text
from unlearn.objectives.methods import METHODS, MethodError, resolve_method
from unlearn.report.build import duration
from unlearn.report.metrics import arrow, direction, fmt
from unlearn.report.plots import BEFORE, DPI, SERIES, STYLE

log = logging.getLogger(__name__)

FORGET_TASKS = ("harmful", "leak", "hallucination", "contains")
FORGET_ROLES = ("unseen", "paraphrase", "forget")  # the plotted one: prompts not trained on first
UTILITY_METRICS = ("similarity_to_original@normal", "recall@retain", "perplexity@normal", "refusal_rate@normal")
ORIGINAL = "original"  # the row and point of the model before unlearning


@dataclass(frozen=True)
class Columns:
    forget: list[str]  # leaderboard columns, the plotted (x) metric first
    utility: list[str]  # the plotted (y) metric first

    @property
    def x(self) -> str:
        return self.forget[0]

    @property
    def y(self) -> str:
        return self.utility[0]


def choose_metrics(eval_cfg: EvalConfig, forget_metric: str | None = None,
                   utility_metric: str | None = None) -> Columns:
    """Forget columns: each forget task's headline on each prompt set it has; the plotted one is the
    first task's headline on held-out prompts when it has some. Utility columns: similarity to the
    original's outputs, retain recall, normal-answer perplexity, over-refusal, as far as the tasks
    write them. An explicit metric must be one the eval section writes; it is plotted."""
    written, forget, plotted = [], [], None
    for task in eval_cfg.tasks:
        roles = [r for r in task.roles if getattr(task, r) is not None or r in task.defaulted]
        written += [f"{m}@{r}" for m in task.metrics for r in roles] + ([task.headline] if task.headline else [])
        written += list(task.metrics) if task.name == "mia" else []
        if task.name in FORGET_TASKS:
            plotted = plotted or next(f"{task.headline}@{r}" for r in FORGET_ROLES if r in roles)
            forget += [f"{task.headline}@{r}" for r in roles if r in FORGET_ROLES]
    utility = [name for name in UTILITY_METRICS if name in written]
    for given, flag in ((forget_metric, "--forget-metric"), (utility_metric, "--utility-metric")):
        if given is not None and given not in written:
            raise ConfigError(f"{flag} {given!r}: the eval section writes no such metric; "
                              f"it writes: {', '.join(dict.fromkeys(written))}")
    plotted = forget_metric or plotted
    if plotted is None:
        raise ConfigError("eval.tasks: compare needs a forget metric: add a harmful, leak, hallucination or "
                          "contains task (or pass --forget-metric)")
    if not (utility_metric or utility):
        raise ConfigError("eval.tasks: compare needs a utility metric: add a utility task (or pass --utility-metric)")
    forget = [plotted, *(name for name in forget if name != plotted)]
    utility = list(dict.fromkeys([utility_metric or utility[0], *utility]))
    return Columns(forget, utility)


def method_config(config: RunConfig, label: str) -> RunConfig:
    """The config for one method or variant. The config's own method runs as written; another method
    keeps the `method:` knobs except `weights` (they name one method's objectives) and the knobs it has
    its own paper default for (npo_beta 0.1 for NPO is not SimNPO's 2.5; mismatch_k 5 random answers for
    the paper is not idk's one refusal per forget row). `compare.<label>` in the config sets that
    method's knobs (weights merged key by key) and, with `lr`, its learning rate; steps and data stay
    shared. A label that is not a method name is a variant: its `name` says which method it runs, so
    one comparison can sweep a grid (idk-kl10, idk-kl30, ...)."""
    extra = (config.compare or {}).get(label)
    name = extra.name if extra is not None and "name" in extra.model_fields_set else label
    if name not in METHODS:
        variants = (f" or a variant of the config's compare: section ({', '.join(config.compare)})"
                    if config.compare else "")
        raise MethodError(f"--methods: unknown method {label!r}; known: {', '.join(sorted(METHODS))}{variants}")
    own = config.method
    if name == own.name:
        knobs = own.model_dump(exclude_unset=True)
    else:
        kept = own.model_fields_set - {"name", "weights"} - set(METHODS[name].defaults)
        knobs = {k: getattr(own, k) for k in kept}
    train = config.train
    if extra is not None:
        extra = extra.model_dump(exclude_unset=True)
        if extra.get("lr") is not None:
            train = train.model_copy(update={"lr": extra["lr"]})
        extra.pop("lr", None)
        if "weights" in extra and knobs.get("weights"):
            extra["weights"] = {**knobs["weights"], **extra["weights"]}
        knobs.update(extra)
    knobs["name"] = name
    method = MethodConfig(**knobs)
    resolve_method(method)  # unknown objective names in compare.<name>.weights fail before any run
    return config.model_copy(update={"method": method, "train": train, "compare": None})


def compare(config_path: str | Path, methods: list[str], output_dir: str | Path, overrides: list[str] | None = None,
            overwrite: bool = False, forget_metric: str | None = None, utility_metric: str | None = None) -> dict:
    """Run every method with the same config, data, budget and eval section; write the leaderboard
    files into `output_dir` and return leaderboard.json's content."""
    from unlearn.preflight import preflight

    started = time.perf_counter()
    config = load_config(config_path, overrides)
    if not config.eval:
        raise ConfigError(f"{config_path}: compare needs an eval: section to score the methods with")
    columns = choose_metrics(parse_eval_config(config.eval), forget_metric, utility_metric)
    methods = list(dict.fromkeys(methods))
    if not methods:
        raise ConfigError("--methods: name at least one method")
    output_dir = _board_folder(output_dir, overwrite)
    configs = {name: method_config(config, name) for name in methods}
    for name, method_cfg in configs.items():  # every input error before any model is loaded
        preflight(method_cfg, output_dir / name, overwrite=overwrite)

    board = {"config": str(config_path), "methods": methods, "forget_metric": columns.x,
             "utility_metric": columns.y, "forget_metrics": columns.forget, "utility_metrics": columns.utility,
             "max_steps": config.train.max_steps, "before": {}, "rows": [], "complete": False}
    rows = []
    for index, name in enumerate(methods, 1):
        log.info("compare: method %d/%d: %s", index, len(methods), name)
        # Each run evaluates the original model again ("before"): greedy decoding makes that stage the
        # same for every method, so this repeats work (one eval per method) but keeps each method's
        # folder a complete `unlearn run` output with its own metrics.json and report.
        rows.append(_run_method(name, configs[name], output_dir / name, overwrite))
        board["before"] = next((r["before"] for r in rows if r.get("before")), {})
        board["rows"] = _rank(rows, board["before"], columns)
        board["frontier"] = frontier_steps(board)
        board["total_seconds"] = round(time.perf_counter() - started, 2)
        _write(board, output_dir)  # a comparison stopped midway keeps the finished methods
    board["complete"] = True
    board["total_seconds"] = round(time.perf_counter() - started, 2)
    _write(board, output_dir)

    from unlearn.ui import console

    console.print(leaderboard_table(board))
    console.print(f"  leaderboard: {output_dir / 'leaderboard.md'}, {output_dir / 'leaderboard.json'}")
    if (output_dir / "frontier.png").exists():
        console.print(f"  frontier plot: {output_dir / 'frontier.png'}")
    return board


def collect(run_dirs: list[str | Path], output_dir: str | Path, forget_metric: str | None = None,
            utility_metric: str | None = None, overwrite: bool = False) -> dict:
    """A leaderboard from finished `unlearn run` folders (runs made separately: a sweep over several
    sessions or machines). Every run must have been evaluated with the same `eval:` section; a row
    is labelled with its folder's name. Writes and returns what `compare` would."""
    folders = [Path(d) for d in dict.fromkeys(str(d) for d in run_dirs)]
    if not folders:
        raise ConfigError("name at least one run folder")
    output_dir = _board_folder(output_dir, overwrite)
    labels = [f.name if [g.name for g in folders].count(f.name) == 1 else f"{f.parent.name}/{f.name}" for f in folders]
    rows, sections = [], {}
    for label, folder in zip(labels, folders):
        for needed in ("config.yaml", "metrics.json", "summary.json"):
            if not (folder / needed).is_file():
                raise ConfigError(f"{folder}: no {needed}; not a finished `unlearn run` output folder")
        config = load_config(folder / "config.yaml")
        if not config.eval:
            raise ConfigError(f"{folder / 'config.yaml'}: the run has no eval: section to compare it by")
        sections[label] = config.eval
        metrics = json.loads((folder / "metrics.json").read_text())
        summary = json.loads((folder / "summary.json").read_text())
        if not metrics.get("after"):
            raise ConfigError(f"{folder / 'metrics.json'}: no 'after' metrics (the run did not finish its evaluation)")
        rows.append(_finished_row(label, folder, summary, metrics, config.train.lr, summary.get("total_seconds", 0.0)))
    first = labels[0]
    for label, section in sections.items():
        if section != sections[first]:
            raise ConfigError(f"{label}: evaluated with another eval: section than {first}; runs are comparable "
                              "only on the same evaluation")
    columns = choose_metrics(parse_eval_config(sections[first]), forget_metric, utility_metric)
    board = {"config": ", ".join(str(f / "config.yaml") for f in folders), "methods": labels,
             "forget_metric": columns.x, "utility_metric": columns.y, "forget_metrics": columns.forget,
             "utility_metrics": columns.utility, "max_steps": max(r["max_steps"] for r in rows),
             "before": rows[0]["before"], "rows": _rank(rows, rows[0]["before"], columns), "complete": True,
             "total_seconds": round(sum(r["wall_seconds"] or 0.0 for r in rows), 2), "collected": True,
             "output_dir": str(output_dir)}
    board["frontier"] = frontier_steps(board)
    _write(board, output_dir)
    return board


def _board_folder(output_dir: str | Path, overwrite: bool) -> Path:
    from unlearn.run import OutputDirError

    output_dir = Path(output_dir)
    if (output_dir / "leaderboard.json").exists() and not overwrite:
        raise OutputDirError(f"{output_dir}: already holds a comparison (leaderboard.json); pass --overwrite to "
                             "replace it")
    return output_dir


def _run_method(name: str, config: RunConfig, folder: Path, overwrite: bool) -> dict:
    from unlearn.run import run

    tick = time.perf_counter()
    row = {"method": name, "output_dir": str(folder)}
    try:
        result = run(config, folder, overwrite=overwrite)
    except Exception as exc:  # noqa: BLE001 - one failing method must not lose the others' results
        message = str(exc).splitlines()[0] if str(exc) else ""
        log.error("compare: %s failed: %s: %s", name, type(exc).__name__, message)
        log.debug("%s", traceback.format_exc())
        return {**row, "status": "failed", "error": f"{type(exc).__name__}: {message}".rstrip(": "),
                "wall_seconds": round(time.perf_counter() - tick, 2)}
    metrics = json.loads((folder / "metrics.json").read_text())
    return _finished_row(name, folder, result.summary, metrics, config.train.lr, round(time.perf_counter() - tick, 2))


def _finished_row(name: str, folder: Path, summary: dict, metrics: dict, lr: float, wall_seconds: float) -> dict:
    """A leaderboard row from a run's summary.json and metrics.json."""
    return {"method": name, "output_dir": str(folder), "status": "diverged" if summary.get("diverged") else "ok",
            "error": None, "after": metrics.get("after", {}), "before": metrics.get("before", {}),
            "steps": summary["steps"], "max_steps": summary["max_steps"], "stop_reason": summary.get("stop_reason"),
            "train_seconds": summary.get("train_seconds"), "wall_seconds": wall_seconds,
            "weights": summary.get("weights", {}), "lr": lr, "selection": summary.get("selection"),
            "interpolated": summary.get("interpolated")}


def original_value(before: dict, name: str) -> float | None:
    """The original model's value of a metric; a `*_to_original` metric compares it with itself."""
    if name.split("@")[0].endswith("_to_original"):
        return 1.0
    value = before.get(name)
    return float(value) if isinstance(value, (int, float)) else None


def _goodness(name: str, value: float | None, forget_side: bool) -> float | None:
    """The value signed so that higher is better (a name that does not say: forget lower, utility higher)."""
    if value is None or not math.isfinite(value):
        return None
    sign = direction(name) or (-1 if forget_side else 1)
    return sign * value


def _rank(rows: list[dict], before: dict, columns: Columns) -> list[dict]:
    """Rows sorted by the plotted forget metric (best first, failures last), each marked `frontier`
    when no other method nor the original model is at least as good on both plotted metrics and
    better on one."""
    def point(get) -> tuple[float, float] | None:
        x, y = _goodness(columns.x, get(columns.x), True), _goodness(columns.y, get(columns.y), False)
        return None if x is None or y is None else (x, y)

    points = [point(r["after"].get) if r.get("after") else None for r in rows]
    rivals = [p for p in [*points, point(lambda name: original_value(before, name))] if p is not None]
    for row, mine in zip(rows, points):
        row["frontier"] = mine is not None and not any(
            p[0] >= mine[0] and p[1] >= mine[1] and p != mine for p in rivals)
    order = sorted(range(len(rows)), key=lambda i: (points[i] is None, [-v for v in points[i] or (0, 0)]))
    return [rows[i] for i in order]


def frontier_steps(board: dict) -> list[dict]:
    """The frontier as a table: for each utility floor a frontier point sets, the best forget value
    reachable without going below it (best utility first; the original model included)."""
    x, y = board["forget_metric"], board["utility_metric"]
    points = [(ORIGINAL, original_value(board["before"], x), original_value(board["before"], y))]
    points += [(r["method"], r["after"].get(x), r["after"].get(y)) for r in board["rows"] if r.get("after")]
    points = [(name, fx, fy) for name, fx, fy in points
              if _goodness(x, fx, True) is not None and _goodness(y, fy, False) is not None]
    steps, best = [], None
    for name, fx, fy in sorted(points, key=lambda p: (-_goodness(y, p[2], False), -_goodness(x, p[1], True))):
        if best is None or _goodness(x, fx, True) > best:
            best = _goodness(x, fx, True)
            steps.append({"utility_floor": fy, "forget": fx, "method": name})
    return steps


def _write(board: dict, output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    plot = frontier_plot(board)
    if plot is not None:
        (output_dir / "frontier.png").write_bytes(plot)
    atomic_write_text(output_dir / "leaderboard.md", leaderboard_markdown(board, plot is not None))
    atomic_write_json(output_dir / "leaderboard.json", board)


def _cells(board: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows shared by the terminal and markdown tables (the original model first)."""
    names = board["forget_metrics"] + board["utility_metrics"]
    header = ["method", *(f"{n} {arrow(direction(n))}".strip() for n in names), "steps", "wall time", "frontier"]
    before = board["before"]
    rows = [[f"{ORIGINAL} (before)", *(fmt(original_value(before, n)) for n in names), "—", "—", ""]] if before else []
    for row in board["rows"]:
        if row["status"] == "failed":
            rows.append([row["method"], f"failed: {row['error']}", *([""] * (len(names) - 1)), "—",
                         duration(row["wall_seconds"]), ""])
            continue
        after = row["after"]
        steps = f"{row['steps']}/{row['max_steps']}" + (" (diverged)" if row["status"] == "diverged" else "")
        rows.append([row["method"], *(fmt(after.get(n)) for n in names), steps, duration(row["wall_seconds"]),
                     "★" if row["frontier"] else ""])
    return header, rows


def leaderboard_table(board: dict):
    from unlearn.ui import table

    header, rows = _cells(board)
    return table(f"leaderboard (sorted by {board['forget_metric']}; total {duration(board['total_seconds'])})",
                 header, rows)


def leaderboard_markdown(board: dict, with_plot: bool) -> str:
    header, rows = _cells(board)
    x, y = board["forget_metric"], board["utility_metric"]
    lines = [
        "# Method comparison", "",
        (f"Collected from finished runs (`unlearn leaderboard`), all evaluated with the same `eval:` section; "
         f"their configs: {', '.join(f'`{c}`' for c in board['config'].split(', '))}." if board.get("collected") else
         f"Config `{board['config']}`: every method ran on the same data, with the same training budget "
         f"({board['max_steps']} steps) and the same `eval:` section."),
        f"Sorted by `{x}`; ★ marks the frontier: no other method, nor the original model, is at least as good "
        f"on both `{x}` and `{y}` and better on one.", "",
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(["---"] + ["---:"] * (len(header) - 2) + [":---:"]) + " |",
        *("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows), "",
    ]
    if with_plot:
        lines += [f"![{x} against {y}, one point per method](frontier.png)", ""]
    if board.get("frontier"):
        bound = "at most" if _goodness(y, 1.0, False) < 0 else "at least"
        lines += [f"The frontier as a table: the best `{x}` reachable with `{y}` {bound} each value:", "",
                  f"| {y} {bound} | best {x} | method |", "| ---: | ---: | --- |",
                  *(f"| {fmt(step['utility_floor'])} | {fmt(step['forget'])} | {step['method']} |"
                    for step in board["frontier"]), ""]
    ran = [r for r in board["rows"] if r["status"] != "failed"]
    if ran:
        lines += ["Settings per method (objective weights, learning rate, the step selection kept):", "",
                  "| method | weights | lr | kept step |", "| --- | --- | ---: | ---: |"]
        for r in ran:
            weights = ", ".join(f"{k} {v:g}" for k, v in r["weights"].items())
            kept = (r.get("selection") or {}).get("best_step", r["steps"])
            if r.get("interpolated"):  # `unlearn interpolate`: that step's update, scaled
                kept = f"{kept}, update x{r['interpolated']['factor']:g}"
            lines.append(f"| {r['method']} | {weights} | {r['lr']:g} | {kept} |" if r.get("lr") is not None
                         else f"| {r['method']} | {weights} | — | {kept} |")
        lines.append("")
    reports = [f"[{r['method']}]({_report_link(r, board)})" for r in board["rows"] if r["status"] != "failed"]
    lines += [f"Total wall time: {duration(board['total_seconds'])}."
              + (" Per-method reports: " + ", ".join(reports) + "." if reports else ""), ""]
    if not board.get("complete"):
        lines.insert(2, "**Incomplete: the comparison is still running or was stopped.**\n")
    return "\n".join(lines)


def _report_link(row: dict, board: dict) -> str:
    """A method's report.md: in its folder under the comparison, or (collected runs) wherever the run is."""
    if not board.get("collected") or not board.get("output_dir"):
        return f"{row['method']}/report.md"
    report = Path(row["output_dir"]).resolve() / "report.md"
    return Path(os.path.relpath(report, Path(board["output_dir"]).resolve())).as_posix()


def frontier_plot(board: dict) -> bytes | None:
    """Forget efficacy (x) against utility (y): one point per method, the original in grey, named in
    a legend (methods at the same point share one entry). Direct labels of nearby points collide."""
    x, y = board["forget_metric"], board["utility_metric"]
    groups: dict[tuple[float, float], list[str]] = {}
    for row in board["rows"]:
        px, py = (row.get("after") or {}).get(x), (row.get("after") or {}).get(y)
        if all(isinstance(v, (int, float)) and math.isfinite(v) for v in (px, py)):
            groups.setdefault((px, py), []).append(row["method"] + (" ★" if row["frontier"] else ""))
    original = (original_value(board["before"], x), original_value(board["before"], y))
    if None not in original:
        groups.setdefault(original, []).insert(0, f"{ORIGINAL} (before)")
    if not groups:
        return None
    with matplotlib.rc_context(STYLE):
        figure = Figure(figsize=(6.4, 4.6), layout="constrained")
        ax = figure.subplots()
        shapes = "oD^vP"  # past the palette's length, colours repeat with another marker
        styles = iter([(SERIES[i % len(SERIES)], shapes[(i // len(SERIES)) % len(shapes)])
                       for i in range(len(groups))])
        frontier = []
        for (px, py), names in groups.items():
            before = (px, py) == original and names[0].startswith(ORIGINAL)
            on_frontier = any(name.endswith("★") for name in names)
            colour, shape = (BEFORE, "s") if before else next(styles)
            if on_frontier:
                frontier.append((px, py))
            ax.scatter(px, py, s=70 if before else 80 if on_frontier else 55, marker=shape, color=colour,
                       zorder=3 if before else 4, edgecolors="#111827" if on_frontier else "none", linewidths=1.2,
                       label=", ".join(names))
        if None not in original and not any(_dominates(p, original, x, y) for p in frontier):
            frontier.append(original)  # the original model is a point of the frontier unless something beats it
        if len(frontier) > 1:  # the frontier as a line through its points, in forget-metric order
            frontier.sort()
            ax.plot(*zip(*frontier), color="#9ca3af", linestyle="--", linewidth=1, zorder=2)
        for name, set_limits, values in ((x, ax.set_xlim, [p[0] for p in groups]),
                                         (y, ax.set_ylim, [p[1] for p in groups])):
            if all(0 <= v <= 1 for v in values):  # a share or a similarity: show its whole 0..1 range
                set_limits(-0.05, 1.08)
        ax.legend(loc="best", fontsize="small", frameon=True, framealpha=0.9, title="★ on the frontier",
                  title_fontsize="small")
        ax.set_xlabel(f"{x} {arrow(direction(x))}".strip() + _better(x, forget_side=True))
        ax.set_ylabel(f"{y} {arrow(direction(y))}".strip() + _better(y, forget_side=False))
        ax.set_title("Forget efficacy against utility")
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=DPI)
        return buffer.getvalue()


def _dominates(point: tuple[float, float], other: tuple[float, float], x: str, y: str) -> bool:
    """At least as good as `other` on both plotted metrics (forget x, utility y)."""
    return (_goodness(x, point[0], True) >= _goodness(x, other[0], True)
            and _goodness(y, point[1], False) >= _goodness(y, other[1], False))


def _better(name: str, forget_side: bool) -> str:
    sign = direction(name) or (-1 if forget_side else 1)
    return " (lower is better)" if sign < 0 else " (higher is better)"
