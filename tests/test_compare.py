"""`unlearn compare` end to end on the tiny llama: leaderboard files, plot, rows, a failing method."""
from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from conftest import base_config, write_jsonl
from unlearn.cli import app
from unlearn.compare import Columns, choose_metrics, compare, method_config
from unlearn.config import ConfigError, load_config
from unlearn.errors import InputError
from unlearn.config.eval import parse_eval_config
from unlearn.objectives.resolve import resolve_method
from unlearn.layout import OutputDirError

FACTS = [{"question": "Where does Alice live?", "value": "Oslo"},
         {"question": "What is Alice's phone number?", "value": "555 0101"}]
RETAIN = [{"question": "Where does Bob live?", "value": "Lima"}]


@pytest.fixture()
def compare_config(tiny_llama, qa_files, tmp_path):
    facts = {"prompt": "question", "response": "value"}
    raw = base_config(tiny_llama, qa_files, max_steps=2)
    raw["model"]["lora"] = {"r": 2, "alpha": 4}
    raw["method"] = {"name": "paper", "mismatch_k": 2, "weights": {"forget_ga": 0.5, "mismatch": 1.0,
                                                                   "kl_to_original": 1.0}}
    raw["output"] = {"save": "none"}
    raw["eval"] = {"generation": {"max_new_tokens": 4, "batch_size": 4}, "max_rows": 3,
                   "tasks": [{"name": "contains", "forget": {"path": str(write_jsonl(tmp_path / "facts.jsonl", FACTS)), **facts},
                              "retain": {"path": str(write_jsonl(tmp_path / "retain.jsonl", RETAIN)), **facts}},
                             {"name": "utility"}]}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_compare_writes_leaderboard_and_frontier(compare_config, tmp_path):
    out = tmp_path / "cmp"
    # rmu reads a decoder layer the 2-layer model does not have: it fails at model load, the others run
    result = CliRunner().invoke(app, ["compare", str(compare_config), "--methods", "npo,paper,rmu",
                                      "--output-dir", str(out), "--set", "compare.rmu.rmu_layer=5"])
    assert result.exit_code == 1, result.output
    assert "1 of 3 methods failed (rmu" in result.output

    board = json.loads((out / "leaderboard.json").read_text())
    assert board["complete"] and board["methods"] == ["npo", "paper", "rmu"]
    assert board["forget_metric"] == "leak_rate@forget" and board["utility_metric"] == "similarity_to_original@normal"
    assert board["utility_metrics"] == ["similarity_to_original@normal", "recall@retain", "perplexity@normal"]
    assert board["total_seconds"] >= sum(r["wall_seconds"] for r in board["rows"])
    rows = {r["method"]: r for r in board["rows"]}
    assert [r["method"] for r in board["rows"]][-1] == "rmu"  # failures sort last
    assert rows["rmu"]["status"] == "failed" and "rmu_layer: 5" in rows["rmu"]["error"]
    for name in ("npo", "paper"):
        row = rows[name]
        assert row["status"] == "ok" and row["steps"] == 2 and row["stop_reason"] == "max_steps"
        assert {"leak_rate@forget", "recall@retain", "similarity_to_original@normal"} <= set(row["after"])
        assert row["before"] == board["before"]  # greedy: the original scores the same in every run
        assert row["train_seconds"] <= row["wall_seconds"] and isinstance(row["frontier"], bool)
        assert (out / name / "metrics.json").exists() and (out / name / "report.md").exists()
    # the config's own method runs as written; another method gets its own objectives, not the config's weights
    assert rows["paper"]["weights"] == {"forget_ga": 0.5, "mismatch": 1.0, "kl_to_original": 1.0}
    assert rows["npo"]["weights"] == {"npo": 1.0, "retain_nll": 1.0}

    markdown = (out / "leaderboard.md").read_text()
    table = [line for line in markdown.split("![")[0].splitlines() if line.startswith("| ")]
    assert "leak_rate@forget ↓" in table[0] and "similarity_to_original@normal ↑" in table[0]
    assert table[2].startswith("| original (before) | ") and len(table) == 2 + 1 + 3  # header, rule, original, 3 methods
    assert "| paper | forget_ga 0.5, mismatch 1, kl_to_original 1 | 0.001 | 2 |" in markdown  # weights, lr, kept step
    assert "failed: MethodError" in table[-1] and "![" in markdown and "(frontier.png)" in markdown
    assert (out / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert board["frontier"][0] == {"utility_floor": 1.0, "forget": board["before"]["leak_rate@forget"],
                                    "method": "original"}
    assert "| similarity_to_original@normal at least | best leak_rate@forget | method |" in markdown

    again = CliRunner().invoke(app, ["compare", str(compare_config), "--methods", "npo", "--output-dir", str(out)])
    assert again.exit_code == 2 and "already holds a comparison" in again.output

    # the same runs collected afterwards (`unlearn leaderboard`) give the same rows and frontier
    collected = CliRunner().invoke(app, ["leaderboard", str(out / "paper"), str(out / "npo"), "-o", str(tmp_path / "lb")])
    assert collected.exit_code == 0, collected.output
    gathered = json.loads((tmp_path / "lb" / "leaderboard.json").read_text())
    ran = {r["method"]: (r["after"], r["frontier"]) for r in board["rows"] if r["method"] != "rmu"}
    assert {r["method"]: (r["after"], r["frontier"]) for r in gathered["rows"]} == ran
    assert gathered["frontier"] == board["frontier"] and gathered["before"] == board["before"]
    assert "(../cmp/paper/report.md)" in (tmp_path / "lb" / "leaderboard.md").read_text()
    other = yaml.safe_load((out / "npo" / "config.yaml").read_text())
    other["eval"]["max_rows"] = 2
    (out / "npo" / "config.yaml").write_text(yaml.safe_dump(other))
    mixed = CliRunner().invoke(app, ["leaderboard", str(out / "paper"), str(out / "npo"), "-o", str(tmp_path / "lb2")])
    assert mixed.exit_code == 2 and "npo: evaluated with another eval: section than paper" in mixed.output
    missing = CliRunner().invoke(app, ["leaderboard", str(out / "rmu"), "-o", str(tmp_path / "lb3")])
    assert missing.exit_code == 2 and "rmu: no config.yaml; not a finished `unlearn run` output folder" in missing.output


def test_metric_choice_follows_the_eval_tasks(compare_config, tmp_path):
    config = load_config(compare_config)
    section = parse_eval_config(config.eval)
    assert choose_metrics(section) == Columns(["leak_rate@forget"], ["similarity_to_original@normal", "recall@retain",
                                                                     "perplexity@normal"])
    chosen = choose_metrics(section, forget_metric="leak_rate", utility_metric="recall@retain")
    assert chosen.x == "leak_rate" and chosen.forget == ["leak_rate", "leak_rate@forget"] and chosen.y == "recall@retain"
    harmful = parse_eval_config({"tasks": [{"name": "harmful", "unseen": {"path": "u.jsonl"}}, {"name": "utility"}]})
    assert choose_metrics(harmful).forget == ["harmful_rate@unseen", "harmful_rate@forget"]  # held-out prompts plotted
    with pytest.raises(ConfigError, match="--forget-metric 'leak_rate@nowhere': the eval section writes no such"):
        choose_metrics(section, forget_metric="leak_rate@nowhere")
    with pytest.raises(ConfigError, match="compare needs a forget metric"):
        choose_metrics(parse_eval_config({"tasks": [{"name": "utility"}]}))


def test_other_methods_keep_knobs_but_not_weights_or_paper_defaults(compare_config):
    raw = yaml.safe_load(compare_config.read_text())
    raw["method"].update(npo_beta=0.05, rmu_steering=3.0)
    config = load_config(raw=raw)
    paper = method_config(config, "paper").method  # the config's own method: its weights and the knobs it reads
    assert paper.weights == config.method.weights and paper.mismatch_k == 2
    assert {"npo_beta", "rmu_steering"}.isdisjoint(paper.model_fields_set)
    npo, simnpo, idk, rmu = (resolve_method(method_config(config, name).method) for name in ("npo", "simnpo", "idk", "rmu"))
    assert npo.weights == {"npo": 1.0, "retain_nll": 1.0} and npo.knobs.npo_beta == 0.05
    assert simnpo.knobs.npo_beta == 2.5  # SimNPO's own paper default, not NPO's beta
    assert idk.knobs.mismatch_k == 1 and rmu.knobs.rmu_steering == 3.0  # one refusal per row; other knobs kept
    # a shared knob reaches only the methods that read it (setting an unread knob is an error)
    assert "rmu_steering" not in method_config(config, "idk").method.model_fields_set
    assert "mismatch_k" not in method_config(config, "npo").method.model_fields_set


def test_compare_section_sets_one_methods_knobs(compare_config):
    raw = yaml.safe_load(compare_config.read_text())
    raw["method"]["weights"] = {"kl_to_original": 3.0}
    raw["compare"] = {"idk": {"weights": {"kl_to_original": 4.0, "forget_ga": 0.0}, "mismatch_k": 2, "lr": 1e-4},
                      "paper": {"weights": {"mismatch": 0.5}}}
    config = load_config(raw=raw)
    idk = resolve_method(method_config(config, "idk").method)
    assert idk.weights == {"mismatch": 1.0, "kl_to_original": 4.0} and idk.knobs.mismatch_k == 2
    assert method_config(config, "idk").train.lr == 1e-4 and method_config(config, "npo").train.lr == config.train.lr
    paper = method_config(config, "paper")
    assert resolve_method(paper.method).weights == {"forget_ga": 0.5, "mismatch": 0.5, "kl_to_original": 3.0}
    assert paper.compare is None and method_config(config, "npo").method.weights is None
    raw["compare"] = {"idk": {"weights": {"nope": 1.0}}}
    with pytest.raises(InputError, match="method.weights: unknown objective 'nope'"):
        method_config(load_config(raw=raw), "idk")
    raw["compare"] = {"idk": {"name": "npo"}}
    with pytest.raises(ConfigError, match="compare: idk.name: 'npo' differs"):
        load_config(raw=raw)


def test_compare_needs_an_eval_section_and_known_methods(compare_config, tmp_path):
    raw = yaml.safe_load(compare_config.read_text())
    del raw["eval"]
    bare = tmp_path / "bare.yaml"
    bare.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="compare needs an eval: section"):
        compare(bare, ["npo"], tmp_path / "x")
    result = CliRunner().invoke(app, ["compare", str(compare_config), "--methods", "npo,nope", "-o", str(tmp_path / "y")])
    assert result.exit_code == 2 and "unknown method 'nope'" in result.output
    assert not (tmp_path / "y" / "npo").exists()  # nothing ran
    (tmp_path / "z").mkdir()
    (tmp_path / "z" / "leaderboard.json").write_text("{}")
    with pytest.raises(OutputDirError):
        compare(compare_config, ["npo"], tmp_path / "z")


def test_variants_sweep_one_method_under_labels_of_their_own(compare_config):
    raw = yaml.safe_load(compare_config.read_text())
    raw["compare"] = {"idk-kl10": {"name": "idk", "weights": {"kl_to_original": 10.0}, "lr": 3e-4},
                      "idk": {"weights": {"kl_to_original": 2.0}}}
    config = load_config(raw=raw)
    variant, plain = method_config(config, "idk-kl10"), method_config(config, "idk")
    assert variant.method.name == plain.method.name == "idk" and variant.train.lr == 3e-4
    assert resolve_method(variant.method).weights == {"forget_ga": 0.5, "mismatch": 1.0, "kl_to_original": 10.0}
    assert resolve_method(plain.method).weights["kl_to_original"] == 2.0
    with pytest.raises(InputError, match=r"unknown method 'idk-kl3'; known: .* or a variant .*idk-kl10"):
        method_config(config, "idk-kl3")
    for bad, message in (({"idk-kl3": {"weights": {}}}, "idk-kl3: not a method name, so it is a variant and needs name:"),
                         ({"x": {"name": "nope"}}, "x.name: unknown method 'nope'"),
                         ({"a/b": {"name": "idk"}}, "a variant's label is also its folder name")):
        raw["compare"] = bad
        with pytest.raises(ConfigError, match=message):
            load_config(raw=raw)


def test_frontier_table_is_the_best_forget_value_at_each_utility_floor():
    from unlearn.compare import frontier_steps

    def row(name, leak, similarity):
        return {"method": name, "after": {"leak_rate@forget": leak, "similarity_to_original@normal": similarity}}

    board = {"forget_metric": "leak_rate@forget", "utility_metric": "similarity_to_original@normal",
             "forget_metrics": ["leak_rate@forget"], "directions": {"leak_rate@forget": "lower",
                                                                    "similarity_to_original@normal": "higher",
                                                                    "perplexity@normal": "lower"},
             "before": {"leak_rate@forget": 0.9},
             "rows": [row("a", 0.5, 0.95), row("b", 0.6, 0.90), row("c", 0.1, 0.70), row("d", 0.0, 0.40),
                      row("e", 0.1, 0.60), {"method": "f", "status": "failed"}]}
    # b is dominated by a, e by c: the floors are the original's 1.0, then a, c and d
    assert frontier_steps(board) == [
        {"utility_floor": 1.0, "forget": 0.9, "method": "original"},
        {"utility_floor": 0.95, "forget": 0.5, "method": "a"},
        {"utility_floor": 0.70, "forget": 0.1, "method": "c"},
        {"utility_floor": 0.40, "forget": 0.0, "method": "d"}]
    perplexity = {**board, "utility_metric": "perplexity@normal", "before": {"leak_rate@forget": 0.9, "perplexity@normal": 10.0},
                  "rows": [{"method": "a", "after": {"leak_rate@forget": 0.2, "perplexity@normal": 12.0}},
                           {"method": "b", "after": {"leak_rate@forget": 0.3, "perplexity@normal": 11.0}}]}
    assert [s["method"] for s in frontier_steps(perplexity)] == ["original", "b", "a"]  # lower perplexity first
