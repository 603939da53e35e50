"""The report: built from a fake run folder (no model), with all files and with only some."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from unlearn.report.build import build_report, metrics_table
from unlearn.config import parse_eval_config
from unlearn.report.metrics import arrow, metric_rows

METRICS = {
    "before": {"harmful_rate": 0.82, "harmful_rate@seen": 0.9, "harmful_rate@unseen": 0.74,
               "similarity_to_original@normal": 1.0, "judge_accuracy": 0.61, "forget_leak_rate": 0.75,
               "retain_recall": 0.88, "nonsense_rate": 0.02, "diversity": 0.71, "mia_auc_loss@forget": 0.68},
    "after": {"harmful_rate": 0.06, "harmful_rate@seen": 0.04, "harmful_rate@unseen": 0.08,
              "similarity_to_original@normal": 0.83, "judge_accuracy": 0.58, "forget_leak_rate": 0.05,
              "retain_recall": 0.81, "nonsense_rate": 0.09, "diversity": 0.66, "mia_auc_loss@forget": 0.52},
    # as the eval tasks declare them (config/eval.py); the demo adds its own names' directions
    "directions": {"harmful_rate": "lower", "harmful_rate@seen": "lower", "harmful_rate@unseen": "lower",
                   "similarity_to_original@normal": "higher", "judge_accuracy": None, "forget_leak_rate": "lower",
                   "retain_recall": "higher", "nonsense_rate": "lower", "diversity": "higher",
                   "mia_auc_loss@forget": 0.5},
}
HOSTILE_PROMPT = "Where does <Alice> live & work?"
HOSTILE_OUTPUT = "<script>alert('x')</script> She lives in Oslo | works at Acme"


def write_run(folder: Path, steps: int = 40, files: tuple[str, ...] | None = None) -> Path:
    """A run folder shaped like `unlearn run` leaves it: every file unless `files` names a subset."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = {"forget_ga": 0.5, "mismatch": 1.0, "kl_to_original": 1.0}
    config = {"model": {"name": "smollm2-135m-instruct", "dtype": "float32",
                        "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}},
              "data": {"forget": {"path": "/data/forget.jsonl", "prompt": "question", "response": "answer"},
                       "normal": [{"path": "/data/normal.csv", "prompt": "Question", "response": "Best Answer"}],
                       "template": "auto", "max_length": 256},
              "method": {"name": "paper", "weights": weights, "mismatch_k": 5},
              "train": {"lr": 2.0e-4, "batch_size": 2, "max_steps": 60, "seed": 8888, "grad_accum": 1},
              "output": {"save": "merged"}}
    log = [{"step": 0, "validation": True, "forget_leak_rate": 0.8, "retain_recall": 0.9,
            "similarity_to_original": 1.0, "score": -0.8, "eligible": True}]
    for step in range(1, steps + 1):
        forget, mismatch = 1.2 + 0.35 * step, 6.0 * math.exp(-step / 12) + 1.5
        normal, kl = 1.1 + 0.004 * step + 0.05 * math.sin(step), 0.002 * step ** 1.3
        log.append({"step": step, "loss": -0.5 * forget + mismatch + kl, "forget_nll": forget,
                    "mismatch_nll": mismatch, "normal_nll": normal, "kl": kl, "loss_forget_ga": -0.5 * forget,
                    "loss_mismatch": mismatch, "loss_kl_to_original": kl, "grad_norm": 1.0, "lr": 2e-4,
                    "seconds": 0.9, "tokens": 512})
        if step % 5 == 0:  # rows as training/select.py appends them
            leak, recall = max(0.05, 0.8 - 0.025 * step), 0.9 - 0.002 * step ** 1.2
            log.append({"step": step, "validation": True, "forget_leak_rate": leak, "retain_recall": recall,
                        "similarity_to_original": 1 - 0.004 * step, "score": -leak, "eligible": recall >= 0.8})
    summary = {"method": "paper", "weights": weights, "steps": steps, "max_steps": 60,
               "stop_reason": "forget NLL above stop_forget_nll=15.0 since step 40", "diverged": False,
               "restored_step": None, "train_seconds": 36.5,
               "wall_seconds": {"load": 3.2, "eval_before": 21.0, "train": 36.5, "save": 2.1, "eval_after": 20.4},
               "total_seconds": 83.4, "outputs": {"merged": str(folder / "model")}, "final": log[-1],
               "selection": {"best_step": 30, "reason": "lowest leak with recall >= 0.8", "score": 0.812}}
    generations = []
    for task, subset, prompts in (("leak", "forget", [HOSTILE_PROMPT, "What is Alice's phone number?",
                                                      "Where does Bob live?", "Who is Carol's employer?"]),
                                  ("utility", "normal", ["What is the capital of France?", "Who wrote Hamlet?"])):
        for prompt in prompts:
            generations.append({"stage": "before", "task": task, "subset": subset, "prompt": prompt,
                                "output": HOSTILE_OUTPUT if prompt == HOSTILE_PROMPT else "Paris. " * 120,
                                "model": "smollm2-135m-instruct"})
            generations.append({"stage": "after", "task": task, "subset": subset, "prompt": prompt,
                                "output": "I don't have any information on that.", "model": "smollm2-135m-instruct"})
    contents = {
        "config.yaml": yaml.safe_dump(config, sort_keys=False),
        "summary.json": json.dumps(summary, indent=2),
        "train_log.jsonl": "".join(json.dumps(r) + "\n" for r in log),
        "metrics.json": json.dumps(METRICS, indent=2),
        "generations.jsonl": "".join(json.dumps(r) + "\n" for r in generations),
    }
    for name, text in contents.items():
        if files is None or name in files:
            (folder / name).write_text(text)
    return folder


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    folder = write_run(tmp_path_factory.mktemp("run"))
    return folder, build_report(folder)


def test_full_report_writes_html_markdown_and_plots(full_report):
    folder, paths = full_report
    assert paths[:2] == [folder / "report.html", folder / "report.md"]
    assert {p.name for p in paths[2:]} == {"metrics.png", "training.png", "loss_terms.png", "validation.png"}
    assert all(p.is_file() and p.read_bytes().startswith(b"\x89PNG") for p in paths[2:])
    assert not list(folder.glob(".*"))  # no temporary files left behind


def test_html_is_self_contained_with_inlined_plots(full_report):
    folder, _ = full_report
    page = (folder / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 4
    assert not re.search(r'(src|href)="(?!data:)', page)  # no external assets
    for fact in ("paper", "smollm2-135m-instruct", "40 / 60", "stop_forget_nll=15.0", "1 min 23 s",
                 "Selected step 30 (score 0.812): lowest leak with recall &gt;= 0.8", "LoRA r=16"):
        assert fact in page


def test_html_metrics_table_shows_values_deltas_and_direction(full_report):
    page = (full_report[0] / "report.html").read_text()
    table = page[page.index('<table class="metrics">'):]
    table = table[:table.index("</table>")]
    # harmful_rate went down (lower is better): green; retain_recall went down (higher is better): red
    assert re.search(r"<b>harmful_rate</b></td><td[^>]*>↓</td><td[^>]*>0\.820</td><td[^>]*>0\.060</td>"
                     r'<td[^>]*><span class="delta better">−0\.760</span>', table)
    assert re.search(r"<b>retain_recall</b></td><td[^>]*>↑</td>.*?"
                     r'<span class="delta worse">−0\.070</span>', table)
    assert '<span class="subset">@unseen</span>' in table
    assert table.index("harmful_rate") < table.index("@seen") < table.index("@unseen") < table.index("similarity")


def test_html_generations_are_paired_escaped_and_truncated(full_report):
    page = (full_report[0] / "report.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "Where does &lt;Alice&gt; live &amp; work?" in page
    leak = page[page.index("<h3>leak · forget</h3>"):page.index("<h3>utility · normal</h3>")]
    assert leak.count('<td class="prompt">') == 3  # a few per subset, not all four
    assert leak.count("I don&#x27;t have any information on that.") == 3
    assert "Paris. " * 120 not in page and "Paris. Paris. …" in page


def test_markdown_links_plots_and_escapes_tables(full_report):
    folder, _ = full_report
    text = (folder / "report.md").read_text()
    for name in ("metrics", "training", "loss_terms", "validation"):
        assert f"(plots/{name}.png)" in text
    assert "| harmful_rate | ↓ | 0.820 | 0.060 | −0.760 ✓ |" in text
    assert "| retain_recall | ↑ | 0.880 | 0.810 | −0.070 ✗ |" in text
    assert "&lt;script&gt;alert('x')&lt;/script&gt; She lives in Oslo \\| works at Acme" in text


def test_partial_run_skips_missing_sections(tmp_path):
    folder = write_run(tmp_path / "killed", steps=8, files=("train_log.jsonl", "summary.json"))
    paths = build_report(folder)
    page = (folder / "report.html").read_text()
    assert [p.name for p in paths] == ["report.html", "report.md", "training.png", "loss_terms.png", "validation.png"]
    assert "Training" in page and "8 / 60" in page
    assert "Before and after" not in page and "Example generations" not in page
    assert "forget_ga 0.5, mismatch 1" in page and "Full resolved config" not in page  # weights from the summary


def test_metrics_only_run_and_rebuild_drops_stale_plots(tmp_path):
    folder = write_run(tmp_path / "run", steps=5)
    build_report(folder)
    for name in ("summary.json", "train_log.jsonl", "generations.jsonl", "config.yaml"):
        (folder / name).unlink()
    paths = build_report(folder)
    assert sorted(p.name for p in (folder / "plots").iterdir()) == ["metrics.png"] == [p.name for p in paths[2:]]
    assert "Before and after unlearning" in (folder / "report.html").read_text()


def test_single_stage_generations_and_damaged_summary(tmp_path):
    folder = tmp_path / "eval"
    folder.mkdir()
    (folder / "generations.jsonl").write_text(json.dumps({"stage": "after", "task": "t", "subset": "s",
                                                          "prompt": "p", "output": ""}) + "\n")
    (folder / "summary.json").write_text("{not json")
    build_report(folder)
    page = (folder / "report.html").read_text()
    assert "<th>after</th>" in page and "<th>before</th>" not in page and "(empty)" in page


def test_empty_folder_is_an_input_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing to report on"):
        build_report(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        build_report(tmp_path / "missing")


TASKS = {"harmful": {"name": "harmful", "unseen": {"path": "u.jsonl"}, "normal": {"path": "n.jsonl"},
                     "benign": {"path": "xstest.csv", "where": {"label": "safe"}}},
         "leak": {"name": "leak", "unseen": {"path": "u.txt"}},
         "hallucination": {"name": "hallucination", "forget": {"path": "h.jsonl"}, "unseen": {"path": "h2.jsonl"}},
         "contains": {"name": "contains", "paraphrase": {"path": "p.jsonl"}, "unseen": {"path": "u.jsonl"},
                      "retain": {"path": "r.jsonl"}},
         "utility": {"name": "utility"},
         "mia": {"name": "mia", "holdout": {"path": "h.jsonl"}}}
EXPECTED = {  # which way is better, per task, as a user of this field reads each metric
    "harmful": {"harmful_rate": "lower", "harmful_rate@forget": "lower", "harmful_rate@unseen": "lower",
                "harmful_rate@normal": "lower", "harmful_rate@benign": "lower", "refusal_rate@forget": "higher",
                "refusal_rate@unseen": "higher", "refusal_rate@normal": "lower", "refusal_rate@benign": "lower",
                "judge_accuracy": None},
    "leak": {"leak_rate": "lower", **{f"{m}@{r}": "lower" for m in ("leak_rate", "bleu", "rouge_l")
                                      for r in ("forget", "unseen")}},
    "hallucination": {"hallucination_rate": "lower", "hallucination_rate@forget": "lower",
                      "hallucination_rate@unseen": "lower"},
    "contains": {"leak_rate": "lower", "leak_rate@forget": "lower", "leak_rate@paraphrase": "lower",
                 "leak_rate@unseen": "lower", "recall@retain": "higher"},
    "utility": {"similarity_to_original": "higher", "similarity_to_original@normal": "higher",
                "rouge_l_to_original@normal": "higher", "bleu_to_original@normal": "higher",
                "diversity@normal": "higher", "fluency_perplexity@normal": "lower", "nonsense_rate@normal": "lower",
                "perplexity@normal": "lower"},
    "mia": {"mia_auc_loss": 0.5, "mia_auc_zlib": 0.5, "mia_auc_min_k": 0.5, "mia_auc_min_k_pp": 0.5,
            "answer_nll@forget": "higher", "answer_nll@holdout": None},
}


@pytest.mark.parametrize("task", sorted(TASKS))
def test_each_tasks_declared_directions_are_what_the_report_shows(task, tmp_path):
    directions = parse_eval_config({"tasks": [TASKS[task]]}).directions()
    assert directions == EXPECTED[task]
    metrics = {"before": {name: 0.6 for name in directions}, "after": {name: 0.5 for name in directions},
               "directions": directions}
    rows = {row.name: row for row in metric_rows(metrics)}
    assert {name: row.direction for name, row in rows.items()} == directions
    for name, row in rows.items():  # 0.6 -> 0.5: better when lower is, or closer to an ideal 0.5
        better = directions[name] == "lower" or directions[name] == 0.5
        assert row.verdict == ("same" if directions[name] is None else "better" if better else "worse"), name
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    build_report(tmp_path)
    page = (tmp_path / "report.html").read_text()
    for name in directions:
        group, _, subset = name.partition("@")
        cell = (f"<b>{group}</b>" if not subset else f'<span class="subset">@{subset}</span>')
        assert re.search(re.escape(cell) + r'</td><td class="dir" title="[^"]*">' + re.escape(arrow(directions[name])) +
                         "</td>", page), name


def test_metric_rows_group_by_prefix_and_handle_one_sided_metrics():
    rows = metric_rows({"before": {"a_rate@x": 0.5, "b": 1.0}, "after": {"a_rate": 0.2, "a_rate@x": 0.4},
                        "directions": {"a_rate": "lower", "a_rate@x": "lower", "b": "higher"}})
    assert [(r.name, r.before, r.after, r.verdict) for r in rows] == [
        ("a_rate", None, 0.2, "same"), ("a_rate@x", 0.5, 0.4, "better"), ("b", 1.0, None, "same")]


def test_terminal_table():
    console = Console(record=True, width=120)
    console.print(metrics_table(METRICS))
    text = console.export_text()
    assert "harmful_rate@unseen" in text and "0.740" in text and "0.080" in text and "−0.660" in text
    console = Console(record=True, width=120)
    console.print(metrics_table({"harmful_rate": 0.1}))  # a flat dict: one column
    text = console.export_text()
    assert "value" in text and "0.100" in text and "after" not in text and "change" not in text


def test_validation_table_lists_rule_metrics_first_and_marks_the_selected_step(tmp_path):
    from unlearn.report.build import _validation_table

    rows = [{"step": s, "validation": True, "diversity@normal": 0.8, "leak_rate@forget": leak,
             "recall@retain": recall, "score": -leak, "eligible": recall >= 0.9}
            for s, leak, recall in ((0, 1.0, 1.0), (4, 0.5, 0.95), (8, 0.1, 0.8))]
    select = {"score": "-leak_rate@forget", "constraint": "recall@retain >= before.recall@retain - 0.1"}
    columns, cells = _validation_table(rows, select, selected=4)
    assert columns == ["step", "leak_rate@forget", "recall@retain", "diversity@normal", "score", "eligible", ""]
    assert cells[1] == ["4", "0.500", "0.950", "0.800", "−0.500", "yes", "◀ selected"]
    assert cells[2][-2:] == ["no", ""] and cells[0][-1] == ""
    assert _validation_table([], select, None) == ([], [])

    folder = write_run(tmp_path / "run", steps=10)
    log = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    log += [dict(r, step=r["step"] + 100) for r in rows]
    (folder / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    build_report(folder)
    page = (folder / "report.html").read_text()
    section = page[page.index("Validation"):]
    assert "leak_rate@forget" in section and "◀ selected" not in section  # selected step 30 is not in this log
    # no select: section in this config: columns in the order the log names them
    assert "| step | diversity@normal | leak_rate@forget | recall@retain | score | eligible |  |" in (
        folder / "report.md").read_text()


def test_small_values_keep_two_significant_digits():
    from unlearn.report.metrics import fmt

    assert fmt(2.1207e-05) == "2.1e-05" and fmt(0.0) == "0.000" and fmt(0.0123) == "0.012"
    assert fmt(-0.0001, signed=True) == "+0.000"  # a difference that small is no change
