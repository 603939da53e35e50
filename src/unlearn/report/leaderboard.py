"""The leaderboard of `unlearn compare` / `unlearn leaderboard` drawn: the terminal table, the
markdown page and the frontier plot (forget efficacy against utility)."""
from __future__ import annotations

import io
import math
import os
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure

from unlearn.report.content import duration
from unlearn.report.metrics import ORIGINAL, arrow, board_goodness, explain, fmt, original_value
from unlearn.report.plots import BEFORE, DPI, SERIES, STYLE


def _cells(board: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows shared by the terminal and markdown tables (the original model first)."""
    names = board["forget_metrics"] + board["utility_metrics"]
    header = ["method", *(f"{n} {arrow(board['directions'].get(n))}".strip() for n in names), "steps", "wall time",
              "frontier"]
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
        bound = "at most" if board_goodness(board, y, 1.0) < 0 else "at least"
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
        if None not in original and not any(_dominates(board, p, original) for p in frontier):
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
        ax.set_xlabel(f"{x} {arrow(board['directions'].get(x))}".strip() + f" ({explain(board['directions'].get(x))})")
        ax.set_ylabel(f"{y} {arrow(board['directions'].get(y))}".strip() + f" ({explain(board['directions'].get(y))})")
        ax.set_title("Forget efficacy against utility")
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=DPI)
        return buffer.getvalue()


def _dominates(board: dict, point: tuple[float, float], other: tuple[float, float]) -> bool:
    """At least as good as `other` on both plotted metrics (forget x, utility y)."""
    x, y = board["forget_metric"], board["utility_metric"]
    return (board_goodness(board, x, point[0]) >= board_goodness(board, x, other[0])
            and board_goodness(board, y, point[1]) >= board_goodness(board, y, other[1]))
