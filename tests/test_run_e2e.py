"""`unlearn run` end to end through the CLI on tiny models; config loading, overrides and errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from conftest import base_config
from unlearn.cli import app
from unlearn.config import ConfigError, apply_overrides, load_config
from unlearn.io import read_jsonl

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
LOG_KEYS = {"step", "forget_nll", "mismatch_nll", "kl", "lr", "seconds", "tokens"}


def write_config(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def unlearn(*args: str):
    result = CliRunner().invoke(app, ["run", *map(str, args)])
    return result


def ok(result) -> None:
    assert result.exit_code == 0, f"exit {result.exit_code}\n{result.output}"


@pytest.mark.parametrize("arch,lora,save", [
    ("llama", True, "both"), ("llama", False, "merged"),
    ("gpt2", True, "merged"), ("gpt2", False, "merged"),
    ("opt", True, "adapter"), ("opt", False, "merged"),
])
def test_run_writes_config_log_summary_and_model(arch, lora, save, request, qa_files, tmp_path):
    raw = base_config(request.getfixturevalue(f"tiny_{arch}"), qa_files)
    raw["output"]["save"] = save
    if lora:
        raw["model"]["lora"] = {"r": 4, "alpha": 8}
    out = tmp_path / "out"
    ok(unlearn(write_config(tmp_path, raw), "--output-dir", out))

    saved = load_config(out / "config.yaml")  # the resolved config reloads to the same run
    assert saved == load_config(raw=raw)
    rows = read_jsonl(out / "train_log.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    for row in rows:
        assert LOG_KEYS <= set(row), LOG_KEYS - set(row)
        assert row["forget_nll"] > 0 and row["mismatch_nll"] > 0 and row["kl"] >= 0 and row["tokens"] > 0
    assert rows[0]["lr"] > rows[1]["lr"] > rows[2]["lr"] == 0.0  # linear decay to zero at max_steps
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["stop_reason"] == "max_steps" and not summary["diverged"]
    assert summary["weights"] == {"forget_ga": 0.5, "mismatch": 1.0, "kl_to_original": 1.0}
    assert summary["final"]["step"] == 3

    expected = {"merged": {"model"}, "adapter": {"adapter"}, "both": {"model", "adapter"}}[save]
    assert set(summary["outputs"]) == expected
    assert (out / "model").exists() == ("model" in expected)
    assert (out / "adapter").exists() == ("adapter" in expected)
    if "model" in expected:
        assert (out / "model" / "model.safetensors").is_file() and (out / "model" / "tokenizer_config.json").is_file()
        AutoModelForCausalLM.from_pretrained(out / "model")  # a plain HF model, no peft needed
    if "adapter" in expected:
        assert (out / "adapter" / "adapter_model.safetensors").is_file()
        assert (out / "adapter" / "adapter_config.json").is_file()


def test_set_overrides_reach_the_run(tiny_llama, qa_files, tmp_path):
    out = tmp_path / "out"
    ok(unlearn(write_config(tmp_path, base_config(tiny_llama, qa_files)), "-o", out,
               "--set", "train.max_steps=2", "--set", "data.normal.response=Best Answer",
               "--set", "method.weights.kl_to_original=2.5", "--set", "method.mismatch_k=1"))
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["train"]["max_steps"] == 2 and saved["method"]["weights"] == {"kl_to_original": 2.5}
    assert saved["data"]["normal"][0]["response"] == "Best Answer"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["weights"]["kl_to_original"] == 2.5
    assert saved["method"]["mismatch_k"] == 1


def test_stop_rule_fires_after_extra_steps(tiny_llama, qa_files, tmp_path):
    out = tmp_path / "out"
    raw = base_config(tiny_llama, qa_files, max_steps=10, stop_forget_nll=0.01, stop_extra_steps=2)
    ok(unlearn(write_config(tmp_path, raw), "-o", out))
    summary = json.loads((out / "summary.json").read_text())
    # a random model's forget NLL (~log vocab) is above 0.01 from step 1: stop at step 1 + 2
    assert summary["steps"] == 3
    assert "stop_forget_nll=0.01 since step 1" in summary["stop_reason"] and "+2 steps" in summary["stop_reason"]
    assert [r["step"] for r in read_jsonl(out / "train_log.jsonl")] == [1, 2, 3]
    never = base_config(tiny_llama, qa_files, max_steps=4, stop_forget_nll=1e6)
    ok(unlearn(write_config(tmp_path, never), "-o", tmp_path / "never"))
    assert json.loads((tmp_path / "never" / "summary.json").read_text())["stop_reason"] == "max_steps"


@pytest.mark.parametrize("override,message", [
    ("train.lr=-1", "train.lr"),
    ("train.learning_rate=1e-4", "train.learning_rate: unknown key"),
    ("output.save=adapter", "output.save: adapter needs model.lora"),
    ("method.name=nope", "unknown method 'nope'; known: "),
    ("method.weights.forget_gaa=1", "unknown objective 'forget_gaa'"),
    ("data.forget.path=missing.jsonl", "missing.jsonl: data file not found (data.forget.path)"),
    ("train.lr", "expected key=value"),
])
def test_bad_input_exits_2_with_one_line_naming_the_field(override, message, tiny_llama, qa_files, tmp_path):
    result = unlearn(write_config(tmp_path, base_config(tiny_llama, qa_files)), "-o", tmp_path / "out",
                     "--set", override)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output
    assert not (tmp_path / "out" / "train_log.jsonl").exists()


def test_existing_run_needs_overwrite(tiny_llama, qa_files, tmp_path):
    config = write_config(tmp_path, base_config(tiny_llama, qa_files, max_steps=1))
    ok(unlearn(config, "-o", tmp_path / "out"))
    again = unlearn(config, "-o", tmp_path / "out")
    assert again.exit_code == 2 and "--overwrite" in again.stderr
    ok(unlearn(config, "-o", tmp_path / "out", "--overwrite"))


# --- config loading ------------------------------------------------------------------------------

def test_apply_overrides_dotted_paths():
    raw = {"train": {"lr": 1.0}, "data": {"normal": [{"path": "a.csv", "response": "x"}]}}
    apply_overrides(raw, ["train.lr=1e-4", "data.normal.response=Best Answer", "method.weights.npo=2",
                          "model.lora.r=8", "train.stop_forget_nll=", "output.save=adapter"])
    assert raw["train"] == {"lr": 1e-4, "stop_forget_nll": ""}
    assert raw["data"]["normal"] == [{"path": "a.csv", "response": "Best Answer"}]  # single-source list
    assert raw["method"] == {"weights": {"npo": 2}} and raw["model"] == {"lora": {"r": 8}}
    with pytest.raises(ConfigError, match=r"train.lr.x: 'lr' is not a section"):
        apply_overrides(raw, ["train.lr.x=1"])
    two = {"data": {"normal": [{"path": "a"}, {"path": "b"}]}}
    with pytest.raises(ConfigError, match=r"'normal' is not a section \(a list of 2: .* normal.0.path\)"):
        apply_overrides(two, ["data.normal.path=c"])  # ambiguous with two sources
    apply_overrides(two, ["data.normal.1.path=c"])  # an item by its index
    assert two["data"]["normal"] == [{"path": "a"}, {"path": "b"}][:1] + [{"path": "c"}]
    tasks = {"eval": {"tasks": [{"name": "tofu", "reference": "runs/r"}]}}
    apply_overrides(tasks, ["eval.tasks.0.reference=null"])  # a one-item list by index, too
    assert tasks["eval"]["tasks"] == [{"name": "tofu", "reference": None}]
    with pytest.raises(ConfigError, match=r"'3' is not an index of that list \(0-0\)"):
        apply_overrides(tasks, ["eval.tasks.3.reference=x"])


def test_validation_errors_name_file_and_field(tmp_path, qa_files, tiny_llama):
    raw = base_config(tiny_llama, qa_files)
    path = write_config(tmp_path, raw)
    assert load_config(path).train.lr == 1e-3
    cases = {
        "data.forget.path": ("data.forget: required key is missing", lambda r: r["data"].pop("forget")),
        "typo": ("train.max_step: unknown key", lambda r: r["train"].update(max_step=3)),
        "type": ("train.batch_size", lambda r: r["train"].update(batch_size="two")),
        "template": ("data.template: template must be", lambda r: r["data"].update(template="{q}")),
        "weights": ("method.weights: weight of 'mismatch' must be a non-negative number",
                    lambda r: r["method"].update(weights={"mismatch": -1})),
        "window": ("data.forget: prompt_tokens must be smaller",
                   lambda r: r["data"]["forget"].update(window_tokens=8, prompt_tokens=8)),
    }
    for name, (message, edit) in cases.items():
        bad = load_config(raw=raw).model_dump(mode="json")
        edit(bad)
        with pytest.raises(ConfigError) as error:
            load_config(write_config(tmp_path, bad))
        assert str(error.value).startswith(str(tmp_path / "config.yaml")), name
        assert message in str(error.value), (name, str(error.value))
    path.write_text("train:\n  lr: [1\n")
    with pytest.raises(ConfigError, match=r"config.yaml:\d+: not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_data_paths_are_relative_to_the_config_file(tmp_path, monkeypatch):
    config = load_config(CONFIGS / "harmful.yaml")
    assert Path(config.data.forget.path) == CONFIGS / "examples" / "harmful_forget.jsonl"
    monkeypatch.chdir(tmp_path)  # wherever the command runs from
    assert Path(load_config(CONFIGS / "harmful.yaml").data.normal[0].path).is_file()


@pytest.mark.parametrize("name", ["harmful", "copyright", "hallucination"])
def test_shipped_configs_run(name, tiny_llama, tmp_path):
    """The example configs and their data are valid: each runs two steps on a tiny model."""
    config = CONFIGS / f"{name}.yaml"
    load_config(config)
    out = tmp_path / "out"
    ok(unlearn(config, "-o", out, "--set", f"model.name={tiny_llama}", "--set", "train.max_steps=2",
               "--set", "method.mismatch_k=2", "--set", "output.save=none", "--set", "model.lora.r=2"))
    rows = read_jsonl(out / "train_log.jsonl")
    assert len(rows) == 2 and all(LOG_KEYS <= set(r) for r in rows)


@pytest.mark.parametrize("path", sorted((CONFIGS / "presets").glob("*.yaml")), ids=lambda p: p.stem)
def test_presets_are_valid_configs(path):
    """The presets read ../shared/data (not shipped): they must at least parse and validate."""
    config = load_config(path)
    assert config.eval  # and the harmful, copyright, hallucination presets choose their checkpoint by validation
    assert config.select or path.stem == "tofu"  # tofu: a fixed budget, judged against the retain model
