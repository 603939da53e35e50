"""`unlearn compare`: several methods on the same data, budget and `eval:` section -> a leaderboard.

Each method is one `unlearn run` into OUTPUT_DIR/<method>/ (its own model, metrics and report).
OUTPUT_DIR then gets leaderboard.json, leaderboard.md and frontier.png: forget efficacy against
utility, one point per method plus the original model (drawn by report/leaderboard.py). A method
that fails is recorded in its row and the others still run. `collect` builds the same files from
runs made separately (`unlearn leaderboard`).
"""
from __future__ import annotations

import json
import logging
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from unlearn.config import ConfigError, MethodConfig, RunConfig, load_config
from unlearn.config.eval import Direction, EvalConfig
from unlearn.io import atomic_write_json, atomic_write_text
from unlearn.layout import OutputDirError, RunFolder
from unlearn.objectives.methods import METHODS, MethodError
from unlearn.objectives.resolve import knobs_read, resolve_method
from unlearn.report.leaderboard import frontier_plot, leaderboard_markdown
from unlearn.report.metrics import ORIGINAL, board_goodness, original_value

log = logging.getLogger(__name__)

FORGET_TASKS = ("harmful", "leak", "hallucination", "contains")
FORGET_ROLES = ("unseen", "paraphrase", "forget")  # the plotted one: prompts not trained on first
UTILITY_METRICS = ("similarity_to_original@normal", "recall@retain", "perplexity@normal", "refusal_rate@benign",
                   "refusal_rate@normal")


@dataclass(frozen=True)
class Columns:
    forget: list[str]  # leaderboard columns, the plotted (x) metric first
    utility: list[str]  # the plotted (y) metric first
    directions: dict[str, Direction] = field(default_factory=dict, compare=False)  # of every column, as its task declares

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
    directions = eval_cfg.directions()
    written, forget, plotted = list(directions), [], None
    for task in eval_cfg.tasks:
        roles = task.present_roles()
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
    return Columns(forget, utility, {name: directions[name] for name in (*forget, *utility)})


def method_config(config: RunConfig, label: str) -> RunConfig:
    """The config for one method or variant. The `method:` section is shared: each method takes the
    knobs it reads; the config's own method also its `weights` (they name one method's objectives),
    another method not the knobs it has its own paper default for (npo_beta 0.1 for NPO is not
    SimNPO's 2.5; mismatch_k 5 random answers for the paper is not idk's one refusal per forget row).
    `compare.<label>` in the config sets that method's knobs (weights merged key by key) and, with
    `lr`, its learning rate; steps and data stay shared. A label that is not a method name is a
    variant: its `name` says which method it runs, so one comparison can sweep a grid (idk-kl10,
    idk-kl30, ...)."""
    extra = (config.compare or {}).get(label)
    name = extra.name if extra is not None and "name" in extra.model_fields_set else label
    if name not in METHODS:
        variants = (f" or a variant of the config's compare: section ({', '.join(config.compare)})"
                    if config.compare else "")
        raise MethodError(f"--methods: unknown method {label!r}; known: {', '.join(sorted(METHODS))}{variants}")
    own = config.method
    knobs = {"weights": own.weights} if name == own.name and own.weights is not None else {}
    readable = shared_knobs(config, name) - ({"weights"} if name == own.name else set(METHODS[name].defaults))
    knobs.update({k: getattr(own, k) for k in own.model_fields_set & readable})
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


def shared_knobs(config: RunConfig, name: str) -> set[str]:
    """The `method:` knobs method `name` reads (the config's own method: with its weights)."""
    weights = dict(METHODS[name].weights)
    if name == config.method.name:
        weights.update(config.method.weights or {})
    return knobs_read(METHODS[name], {k: w for k, w in weights.items() if w > 0})


def compare(config_path: str | Path, methods: list[str], output_dir: str | Path, overrides: list[str] | None = None,
            overwrite: bool = False, forget_metric: str | None = None, utility_metric: str | None = None) -> dict:
    """Run every method with the same config, data, budget and eval section; write the leaderboard
    files into `output_dir` and return leaderboard.json's content."""
    from unlearn.preflight import preflight

    started = time.perf_counter()
    config = load_config(config_path, overrides)
    if not config.eval:
        raise ConfigError(f"{config_path}: compare needs an eval: section to score the methods with")
    columns = choose_metrics(config.eval, forget_metric, utility_metric)
    methods = list(dict.fromkeys(methods))
    if not methods:
        raise ConfigError("--methods: name at least one method")
    output_dir = _board_folder(output_dir, overwrite)
    configs = {name: method_config(config, name) for name in methods}
    for name, method_cfg in configs.items():  # every input error before any model is loaded
        preflight(method_cfg, output_dir / name, overwrite=overwrite)

    board = {"config": str(config_path), "methods": methods, **_column_fields(columns),
             "max_steps": config.train.max_steps, "before": {}, "rows": [], "complete": False}
    rows = []
    for index, name in enumerate(methods, 1):
        log.info("compare: method %d/%d: %s", index, len(methods), name)
        # Each run evaluates the original model again ("before"): greedy decoding makes that stage the
        # same for every method, so this repeats work (one eval per method) but keeps each method's
        # folder a complete `unlearn run` output with its own metrics.json and report.
        rows.append(_run_method(name, configs[name], output_dir / name, overwrite))
        board["before"] = next((r["before"] for r in rows if r.get("before")), {})
        board["rows"] = _rank(rows, board)
        board["frontier"] = frontier_steps(board)
        board["total_seconds"] = round(time.perf_counter() - started, 2)
        _write(board, output_dir)  # a comparison stopped midway keeps the finished methods
    board["complete"] = True
    board["total_seconds"] = round(time.perf_counter() - started, 2)
    _write(board, output_dir)
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
        run = RunFolder(folder)
        for needed in (run.config, run.metrics, run.summary):
            if not needed.is_file():
                raise ConfigError(f"{folder}: no {needed.name}; not a finished `unlearn run` output folder")
        config = load_config(run.config)
        if not config.eval:
            raise ConfigError(f"{run.config}: the run has no eval: section to compare it by")
        sections[label] = config.eval
        metrics = json.loads(run.metrics.read_text())
        summary = json.loads(run.summary.read_text())
        if not metrics.get("after"):
            raise ConfigError(f"{run.metrics}: no 'after' metrics (the run did not finish its evaluation)")
        rows.append(_finished_row(label, folder, summary, metrics, config.train.lr, summary.get("total_seconds", 0.0)))
    first = labels[0]
    for label, section in sections.items():
        if section != sections[first]:
            raise ConfigError(f"{label}: evaluated with another eval: section than {first}; runs are comparable "
                              "only on the same evaluation")
    columns = choose_metrics(sections[first], forget_metric, utility_metric)
    board = {"config": ", ".join(str(RunFolder(f).config) for f in folders), "methods": labels,
             **_column_fields(columns), "max_steps": max(r["max_steps"] for r in rows),
             "before": rows[0]["before"], "rows": [], "complete": True,
             "total_seconds": round(sum(r["wall_seconds"] or 0.0 for r in rows), 2), "collected": True,
             "output_dir": str(output_dir)}
    board["rows"] = _rank(rows, board)
    board["frontier"] = frontier_steps(board)
    _write(board, output_dir)
    return board


def _column_fields(columns: Columns) -> dict:
    return {"forget_metric": columns.x, "utility_metric": columns.y, "forget_metrics": columns.forget,
            "utility_metrics": columns.utility, "directions": columns.directions}


def _board_folder(output_dir: str | Path, overwrite: bool) -> Path:
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
    metrics = json.loads(RunFolder(folder).metrics.read_text())
    return _finished_row(name, folder, result.summary, metrics, config.train.lr, round(time.perf_counter() - tick, 2))


def _finished_row(name: str, folder: Path, summary: dict, metrics: dict, lr: float, wall_seconds: float) -> dict:
    """A leaderboard row from a run's summary.json and metrics.json."""
    return {"method": name, "output_dir": str(folder), "status": "diverged" if summary.get("diverged") else "ok",
            "error": None, "after": metrics.get("after", {}), "before": metrics.get("before", {}),
            "steps": summary["steps"], "max_steps": summary["max_steps"], "stop_reason": summary.get("stop_reason"),
            "train_seconds": summary.get("train_seconds"), "wall_seconds": wall_seconds,
            "weights": summary.get("weights", {}), "lr": lr, "selection": summary.get("selection"),
            "interpolated": summary.get("interpolated")}


def _rank(rows: list[dict], board: dict) -> list[dict]:
    """Rows sorted by the plotted forget metric (best first, failures last), each marked `frontier`
    when no other method nor the original model is at least as good on both plotted metrics and
    better on one."""
    x_name, y_name = board["forget_metric"], board["utility_metric"]

    def point(get) -> tuple[float, float] | None:
        x, y = board_goodness(board, x_name, get(x_name)), board_goodness(board, y_name, get(y_name))
        return None if x is None or y is None else (x, y)

    points = [point(r["after"].get) if r.get("after") else None for r in rows]
    rivals = [p for p in [*points, point(lambda name: original_value(board["before"], name))] if p is not None]
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
              if board_goodness(board, x, fx) is not None and board_goodness(board, y, fy) is not None]
    steps, best = [], None
    for name, fx, fy in sorted(points, key=lambda p: (-board_goodness(board, y, p[2]), -board_goodness(board, x, p[1]))):
        if best is None or board_goodness(board, x, fx) > best:
            best = board_goodness(board, x, fx)
            steps.append({"utility_floor": fy, "forget": fx, "method": name})
    return steps


def _write(board: dict, output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    plot = frontier_plot(board)
    if plot is not None:
        (output_dir / "frontier.png").write_bytes(plot)
    atomic_write_text(output_dir / "leaderboard.md", leaderboard_markdown(board, plot is not None))
    atomic_write_json(output_dir / "leaderboard.json", board)


