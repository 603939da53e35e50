"""The shape of the code: no import circles, bad `select:` and method knobs rejected before any
weights load, the reference model built only when something reads it, and `run()` making the
CLI's checks."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from conftest import base_config
from test_reliability import assert_input_error, cli, write_config
from unlearn.config import load_config
from unlearn.layout import OutputDirError

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "unlearn"


def import_graph() -> dict[str, set[str]]:
    """Module -> project modules it imports, at module level or inside functions (TYPE_CHECKING too):
    a function-level import hides a circle, it does not remove it."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            for target in targets:
                # importing a.b.c also runs a/__init__ and a/b/__init__
                chain = target.split(".")
                graph[name] |= {".".join(chain[:i]) for i in range(1, len(chain) + 1)
                                if ".".join(chain[:i]) in modules and not name.startswith(".".join(chain[:i]))}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_package_has_no_import_circles():
    graph = import_graph()
    assert "unlearn.config.run" in graph and "unlearn.objectives.losses" in graph["unlearn.training.loop"]
    assert cycles(graph) == []
    # the checker finds a circle when there is one
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_config_package_loads_without_torch():
    import subprocess
    import sys

    code = "import sys, unlearn.config; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


@pytest.fixture()
def no_weights(monkeypatch):
    """Loading a model fails the test: the input error must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the input was checked")
    monkeypatch.setattr("unlearn.run.load_model", refuse)


@pytest.mark.parametrize("select,fragment", [
    ({"evry": 5}, "select.evry: unknown key; known keys: every, score, constraint"),
    ({"every": 5, "score": "-leak_rate@forget +"}, "select.score: cannot parse rule '-leak_rate@forget +'"),
    ({"every": 5, "constraint": "__import__('os')"}, "select.constraint: rule \"__import__('os')\": Call is not allowed"),
    ({"every": 5, "eval": {"tasks": [{"name": "utilty"}]}}, "select.eval.tasks.0: "),
])
def test_a_bad_select_section_exits_2_before_any_weights_load(select, fragment, tiny_llama, qa_files, tmp_path,
                                                              no_weights):
    raw = {**base_config(tiny_llama, qa_files), "select": select,
           "eval": {"tasks": [{"name": "utility"}]}}
    assert_input_error(cli("run", write_config(tmp_path, raw), "-o", tmp_path / "out"), fragment)
    assert not (tmp_path / "out").exists()


def test_select_without_an_eval_section_exits_2_before_any_weights_load(tiny_llama, qa_files, tmp_path, no_weights):
    raw = {**base_config(tiny_llama, qa_files), "select": {"every": 2}}
    assert_input_error(cli("run", write_config(tmp_path, raw), "-o", tmp_path / "out"),
                       "select: needs an eval: section (or select.eval) to validate with")


def test_a_knob_the_method_does_not_read_exits_2_before_any_weights_load(tiny_llama, qa_files, tmp_path, no_weights):
    raw = base_config(tiny_llama, qa_files)
    raw["method"] = {"name": "npo", "rmu_steering": 3}
    assert_input_error(cli("run", write_config(tmp_path, raw), "-o", tmp_path / "out"),
                       "method.rmu_steering: 'npo' does not read this knob", "(its knobs: npo_beta)")


def test_the_python_api_makes_the_clis_checks(tiny_llama, qa_files, tmp_path, no_weights):
    from unlearn.run import run

    config = load_config(raw=base_config(tiny_llama, qa_files))
    with pytest.raises(OutputDirError, match="inside the model folder"):
        run(config, tiny_llama / "out")
    config = load_config(raw={**base_config(tiny_llama, qa_files), "method": {"name": "ga", "kl_tokens": 2}})
    with pytest.raises(Exception, match="method.kl_tokens: 'ga' does not read"):
        run(config, tmp_path / "out")


@pytest.mark.parametrize("method,copies", [("ga", 0), ("simnpo", 0), ("paper", 1), ("npo", 1)])
def test_a_full_fine_tune_copies_the_model_only_when_an_objective_reads_the_original(
        method, copies, tiny_llama, qa_files, tmp_path, monkeypatch):
    import unlearn.run
    from unlearn.models.prepare import frozen_copy

    made = []
    monkeypatch.setattr(unlearn.run, "frozen_copy", lambda model: made.append(1) or frozen_copy(model))
    raw = base_config(tiny_llama, qa_files, max_steps=2)
    raw["method"] = {"name": method}
    result = unlearn.run.run(load_config(raw=raw), tmp_path / "out")
    assert len(made) == copies  # ga / simnpo read no reference: one model in memory
    rows = [json.loads(line) for line in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    assert result.summary["steps"] == 2 and len(rows) == 2
    assert all(("kl" in row) == (method == "paper") for row in rows)  # the KL is logged where it is computed
