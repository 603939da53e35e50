"""Every command of the README's "Use" block runs as written, in a quick form: the example configs
copied beside the commands with the real model swapped for a tiny one and a short budget, so the
README cannot drift from the code (a command it shows that fails, or a config without the section a
command needs, fails here)."""
from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from unlearn.cli import app

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = "smollm2-135m-instruct"
# commands shown with optional parts ([--quick], [--json FILE]) that run the real model for minutes:
# each is run by the test named here instead
RUN_ELSEWHERE = {"unlearn demo": "tests/test_demo.py", "python benchmarks/bench.py": "tests/test_bench.py",
                 "python benchmarks/alignment_cost.py": "tests/test_alignment_cost.py"}


def readme_use_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"^## Use\n.*?```bash\n(.*?)```", text, re.S | re.M)
    assert block, "README.md has no ```bash block under '## Use'"
    lines = [re.split(r"\s{2,}#", line)[0].strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line]


def test_every_command_is_run_here_or_by_a_named_test():
    commands = readme_use_commands()
    assert len(commands) >= 10
    for command in commands:
        assert command.startswith(("unlearn ", "python benchmarks/")), command
        elsewhere = [prefix for prefix in RUN_ELSEWHERE if command.startswith(prefix)]
        if elsewhere:
            assert (ROOT / RUN_ELSEWHERE[elsewhere[0]]).exists()
        else:
            assert "[" not in command, f"{command!r}: optional parts cannot be run as written"
    subcommands = {c.split()[1] for c in commands if c.startswith("unlearn ")}
    assert subcommands >= {"run", "eval", "report", "compare", "leaderboard", "interpolate", "finetune", "demo"}


def quick_configs(tmp_path: Path, tiny_model: Path) -> None:
    """configs/ copied into the working folder; each example config on the tiny model, 4 steps."""
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    for path in (tmp_path / "configs").glob("*.yaml"):
        raw = yaml.safe_load(path.read_text())
        assert raw["model"]["name"] == DEFAULT_MODEL, path.name
        assert raw.get("eval", {}).get("tasks"), f"{path.name}: no eval: section (unlearn eval / compare need one)"
        raw["model"]["name"] = str(tiny_model)
        raw["data"]["max_length"] = 64
        raw["train"].update(max_steps=4, save_every=2)
        raw["eval"]["generation"] = {"max_new_tokens": 4}
        path.write_text(yaml.safe_dump(raw, sort_keys=False))


def test_readme_use_commands_run_as_written(tiny_llama, tmp_path, monkeypatch):
    quick_configs(tmp_path, tiny_llama)
    monkeypatch.chdir(tmp_path)
    ran = []
    for command in readme_use_commands():
        if any(command.startswith(prefix) for prefix in RUN_ELSEWHERE):
            continue
        args = [str(tiny_llama) if arg == DEFAULT_MODEL else arg for arg in shlex.split(command)[1:]]
        result = CliRunner().invoke(app, ["--quiet", *args])
        assert result.exit_code == 0, f"{command}\n{result.output}"
        ran.append(args[0])
    assert ran.count("run") == 4 and {"eval", "report", "compare", "leaderboard", "interpolate", "finetune"} <= set(ran)
    runs = tmp_path / "runs"
    assert not (runs / "plan").exists()  # --dry-run writes nothing
    # what the commands were to leave behind
    assert json.loads((runs / "harmful/summary.json").read_text())["steps"] == 4
    h2 = yaml.safe_load((runs / "h2/config.yaml").read_text())
    assert h2["train"]["lr"] == 1e-4 and h2["data"]["normal"][0]["response"] == "Best Answer"
    for key in ("before", "after"):
        assert "harmful_rate@unseen" in json.loads((runs / "harmful/metrics.json").read_text())[key]
    assert "harmful_rate@unseen" in json.loads((runs / "eval/metrics.json").read_text())["after"]
    assert (runs / "harmful/report.html").exists() and (runs / "board/leaderboard.md").exists()
    assert {r["method"] for r in json.loads((runs / "cmp/leaderboard.json").read_text())["rows"]} >= {"paper", "rmu"}
    assert len(list((runs / "pts").glob("*-x*"))) == 2
    assert (runs / "leaky/config.json").exists()


@pytest.mark.parametrize("name", ["harmful", "copyright", "hallucination"])
def test_example_config_evaluates_a_model(name, tiny_llama, tmp_path, monkeypatch):
    """`unlearn eval` on each example config (the README shows the harmful one); the config's own
    model is evaluated as "before" only."""
    quick_configs(tmp_path, tiny_llama)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["--quiet", "eval", f"configs/{name}.yaml", "--model", str(tiny_llama),
                                      "-o", "out"])
    assert result.exit_code == 0, result.output
    headline = {"harmful": "harmful_rate", "copyright": "leak_rate", "hallucination": "hallucination_rate"}[name]
    metrics = json.loads((tmp_path / "out/metrics.json").read_text())["before"]
    assert 0.0 <= metrics[headline] <= 1.0 and "similarity_to_original@normal" in metrics
