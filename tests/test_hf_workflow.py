"""The Hugging Face workflow: `datasets` data sets in (a `save_to_disk` folder, a hub id from the local
cache), a model card beside the saved model, experiment tracking (TensorBoard, W&B offline) out, and
`unlearn run --dry-run`."""
from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from conftest import FORGET_ROWS, NORMAL_ROWS, write_jsonl
from unlearn.cli import app
from unlearn.config import ConfigError, SourceConfig, load_config
from unlearn.data.sources import DataError, read_fields, read_pairs
from unlearn.io import read_jsonl

# a forget set as PKU-SafeRLHF publishes one: a prompt, a response, a safety label; the test split is held out
LABELLED = [{"question": r["question"], "answer": r["answer"], "is_safe": i == 3} for i, r in enumerate(FORGET_ROWS)]


def save_dataset(folder: Path, splits: dict[str, list[dict]] | list[dict]) -> Path:
    import datasets

    if isinstance(splits, list):  # one split, saved as a Dataset
        datasets.Dataset.from_list(splits).save_to_disk(str(folder))
    else:
        datasets.DatasetDict({name: datasets.Dataset.from_list(rows) for name, rows in splits.items()}).save_to_disk(
            str(folder))
    return folder


def cli(*args: str):
    return CliRunner().invoke(app, [*map(str, args)])


def one_line_error(result, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0].removeprefix("error: ")


@pytest.fixture(scope="module")
def project(tiny_llama, tmp_path_factory) -> Path:
    """A config beside its data: the forget set a save_to_disk folder (named relative to the config),
    the normal data a CSV file."""
    import csv

    folder = tmp_path_factory.mktemp("project")
    save_dataset(folder / "forget_set", {"train": LABELLED, "test": LABELLED[:2]})
    with (folder / "normal.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["Question", "Best Answer"])
        writer.writeheader()
        writer.writerows(NORMAL_ROWS)
    contains = {"name": "contains", "retain": {"dataset": "forget_set", "split": "test", "prompt": "question",
                                               "response": "answer"}}
    raw = {"model": {"name": str(tiny_llama), "lora": {"r": 4, "alpha": 8}},
           "data": {"forget": {"dataset": "forget_set", "split": "train", "prompt": "question", "response": "answer",
                               "where": {"is_safe": False}},
                    "normal": {"path": "normal.csv", "prompt": "Question", "response": "Best Answer"},
                    "max_length": 64},
           "method": {"name": "paper", "mismatch_k": 2},
           "train": {"lr": 1e-3, "batch_size": 2, "max_steps": 3, "seed": 1, "report_to": ["tensorboard"]},
           "output": {"save": "both"},
           "eval": {"generation": {"max_new_tokens": 4, "batch_size": 4}, "tasks": [contains]},
           "select": {"every": 2, "score": "-leak_rate@forget", "constraint": "True"}}
    (folder / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return folder


@pytest.fixture(scope="module")
def finished(project, tmp_path_factory) -> Path:
    """One tiny run of that config, from another working directory."""
    out = tmp_path_factory.mktemp("runs") / "out"
    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("elsewhere"))
    try:
        result = cli("run", project / "config.yaml", "-o", out)
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
    return out


# --- data sets in --------------------------------------------------------------------------------

def test_a_save_to_disk_forget_set_is_read_beside_its_config(project, finished):
    saved = load_config(finished / "config.yaml")
    assert saved.data.forget.dataset == str((project / "forget_set").resolve())  # absolute: the run travels
    assert saved.eval.tasks[0].retain.dataset == str((project / "forget_set").resolve())
    summary = json.loads((finished / "summary.json").read_text())
    assert summary["data"] == {"forget": [3], "normal": [4], "mismatch_pool": 4}  # where: is_safe = false keeps 3
    assert summary["steps"] == 3
    metrics = json.loads((finished / "metrics.json").read_text())
    assert "recall@retain" in metrics["after"]  # the eval set read from the data set's test split


def test_where_filters_a_file_and_a_data_set_alike(tmp_path):
    import csv

    save_dataset(tmp_path / "saved", LABELLED)
    write_jsonl(tmp_path / "rows.jsonl", LABELLED)
    with (tmp_path / "rows.csv").open("w", newline="") as handle:  # CSV cells are text: "False"
        writer = csv.DictWriter(handle, fieldnames=list(LABELLED[0]))
        writer.writeheader()
        writer.writerows(LABELLED)
    expected = [(r["question"], r["answer"]) for r in LABELLED if not r["is_safe"]]
    for where in ({"dataset": str(tmp_path / "saved")}, {"path": str(tmp_path / "rows.jsonl")},
                  {"path": str(tmp_path / "rows.csv")}):
        source = SourceConfig(**where, prompt="question", response="answer", where={"is_safe": False})
        assert [(p.prompt, p.response) for p in read_pairs(source)] == expected, where
        assert len(read_fields(source.model_copy(update={"skip": 1, "limit": 1}), ("question",))) == 1
    with pytest.raises(DataError, match=r"saved: where: unknown field 'safe'; fields are: question, answer, is_safe"):
        read_pairs(SourceConfig(dataset=str(tmp_path / "saved"), prompt="question", response="answer",
                                where={"safe": False}))


def test_data_set_mistakes_fail_with_one_line_naming_the_source(tmp_path):
    saved = save_dataset(tmp_path / "dict", {"train": LABELLED, "test": LABELLED[:1]})
    single = save_dataset(tmp_path / "single", LABELLED)
    (tmp_path / "plain").mkdir()
    cases = [
        ({"dataset": str(saved), "split": "validation"}, f"{saved}: no split 'validation'; splits are: train, test"),
        ({"dataset": str(saved), "subset": "en"}, "subset: names a configuration of a hub data set"),
        ({"dataset": str(single), "split": "test"}, "holds one split (saved without a name), not 'test'"),
        ({"dataset": str(tmp_path / "plain")}, f"{tmp_path / 'plain'}: not a folder written by save_to_disk"),
        ({"dataset": "./nope"}, "./nope: data set folder not found"),
        ({"dataset": str(saved), "prompt": "prompt"}, f"{saved}: unknown field 'prompt'; fields are: question"),
    ]
    for settings, message in cases:
        with pytest.raises(DataError) as error:
            read_pairs(SourceConfig(**{"prompt": "question", "response": "answer", **settings}))
        assert message in str(error.value) and "\n" not in str(error.value), (settings, str(error.value))
    assert len(read_pairs(SourceConfig(dataset=str(single), prompt="question", response="answer"))) == 4
    assert len(read_pairs(SourceConfig(dataset=str(saved), prompt="question", response="answer"))) == 4  # train


@pytest.mark.parametrize("source,message", [
    ({}, "data.forget: give path: (a data file) or dataset: (a Hugging Face data set"),
    ({"path": "f.jsonl", "dataset": "org/set"}, "data.forget: give path: (a data file) or dataset: (a Hugging Face "
                                                "data set: hub id or save_to_disk folder), not both"),
    ({"path": "f.jsonl", "split": "test"}, "data.forget: split: and subset: choose the rows of a dataset:"),
    ({"dataset": "org/set", "format": "csv"}, "data.forget: format: is for path: files"),
])
def test_a_source_names_a_file_or_a_data_set(source, message):
    raw = {"data": {"forget": source, "normal": {"path": "n.jsonl"}}}
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(raw=raw)


@pytest.fixture()
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test (and is recorded)."""
    attempts = []

    def connect(self, address):
        attempts.append(address)
        raise AssertionError(f"a socket was opened to {address}")
    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect)
    return attempts


def test_a_hub_data_set_that_is_not_cached_fails_with_one_line_and_no_socket(project, tmp_path, monkeypatch,
                                                                             no_network):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "empty-cache")
    raw = yaml.safe_load((project / "config.yaml").read_text())
    raw["data"]["forget"] = {"dataset": "PKU-Alignment/PKU-SafeRLHF", "split": "train", "prompt": "prompt",
                             "response": "response_0", "where": {"is_response_0_safe": False}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    message = one_line_error(cli("run", tmp_path / "config.yaml", "-o", tmp_path / "out"))
    assert message == ("PKU-Alignment/PKU-SafeRLHF: not in the local Hugging Face cache and HF_HUB_OFFLINE=1 "
                       "(no download attempted)")
    assert no_network == [] and not (tmp_path / "out").exists()


def test_a_cached_hub_data_set_is_read_offline(tmp_path, monkeypatch, no_network):
    """A hub data set that was downloaded once is read from the datasets cache (made here as
    `load_dataset` leaves it), with no connection."""
    import datasets

    cache = tmp_path / "datasets-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    write_jsonl(tmp_path / "train.jsonl", [{"prompt": r["question"], "response_0": r["answer"],
                                            "is_response_0_safe": r["is_safe"]} for r in LABELLED])
    datasets.load_dataset("json", data_files={"train": str(tmp_path / "train.jsonl")})
    built = Path(next(p for p in glob.glob(str(cache / "json" / "*" / "*" / "*")) if os.path.isdir(p)))
    target = cache / "some-org___safety-set" / "default" / "0.0.0" / built.name
    shutil.copytree(built, target)
    for arrow in target.glob("json-*.arrow"):
        arrow.rename(target / arrow.name.replace("json-", "safety-set-"))
    source = SourceConfig(dataset="some-org/safety-set", prompt="prompt", response="response_0",
                          where={"is_response_0_safe": False})
    assert [p.prompt for p in read_pairs(source)] == [r["question"] for r in LABELLED if not r["is_safe"]]
    assert no_network == []


def test_finetune_reads_a_data_set(tiny_llama, tmp_path):
    from unlearn.finetune import run_finetune

    saved = save_dataset(tmp_path / "book", LABELLED)
    result = run_finetune(str(tiny_llama), [f"{{dataset: {saved}, prompt: question, response: answer}}"],
                          tmp_path / "leaky", epochs=1, lr=1e-3)
    assert result.rows == 4
    assert json.loads((tmp_path / "leaky" / "finetune.json").read_text())["data"][0]["dataset"] == str(saved)


# --- model cards out ----------------------------------------------------------------------------

def test_the_model_card_loads_with_modelcard_and_names_the_base_model(tiny_llama, finished):
    from huggingface_hub import ModelCard

    for folder, library in (("model", "transformers"), ("adapter", "peft")):
        card = ModelCard.load(finished / folder / "README.md")
        assert card.data.base_model == str(tiny_llama)
        assert card.data.library_name == library and card.data.pipeline_tag == "text-generation"
        assert card.data.tags == ["unlearning", "paper"]
        assert "forget_ga 0.5, mismatch 1, kl_to_original 1" in card.text  # the method and its weights
        assert "forget_set[train] (3 rows)" in card.text and "normal.csv (4 rows)" in card.text  # data sizes
        assert "| max steps | 3 |" in card.text and "**Wall time:**" in card.text  # budget and time
        assert "| leak_rate@forget |" in card.text and "| metric |  | before | after | change |" in card.text
    assert "AutoPeftModelForCausalLM" in ModelCard.load(finished / "adapter" / "README.md").text


def test_an_alias_card_names_the_hub_model_it_converts():
    from unlearn.config import load_config
    from unlearn.report.card import model_card
    from unlearn.report.content import Report

    config = load_config(raw={"data": {"forget": {"path": "f.jsonl"}, "normal": {"path": "n.jsonl"}}})
    card = model_card(config, Report(Path("out"), "paper"), "model", Path("out/model"))
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"


# --- experiment tracking out --------------------------------------------------------------------

def test_tensorboard_scalars_equal_the_train_log(finished):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(finished / "logs" / "unlearn"))
    events.Reload()
    logged = {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}
    rows = read_jsonl(finished / "train_log.jsonl")
    expected = {}
    for row in rows:
        group = "validation" if row.get("validation") else "train"
        for key, value in row.items():
            if key not in ("step", "validation") and isinstance(value, (int, float)):
                expected.setdefault(f"{group}/{key}", {})[row["step"]] = value
    assert {"train/loss_forget_ga", "train/loss_mismatch", "train/loss_kl_to_original", "train/kl", "train/lr",
            "validation/leak_rate@forget", "validation/score"} <= set(expected)
    assert set(logged) == set(expected)
    for tag, values in expected.items():  # event files hold float32: each value is the log's, rounded so
        assert logged[tag] == {step: float(np.float32(v)) for step, v in values.items()}, tag
    assert sorted(logged["validation/leak_rate@forget"]) == [0, 2] and sorted(logged["train/loss"]) == [1, 2, 3]


def test_wandb_logs_offline_into_the_logs_folder(tiny_llama, qa_files, tmp_path, monkeypatch):
    """W&B (not installed here) through a stand-in with wandb's interface: the run is offline, under
    OUTPUT_DIR/logs, and gets exactly the train log's values."""
    from accelerate.tracking import _available_trackers
    from accelerate.utils import LoggerType

    from conftest import base_config

    calls = {"log": []}

    class Run:
        def log(self, values, step=None):
            calls["log"].append((step, values))

        def finish(self):
            calls["finished"] = True

    def init(**kwargs):
        calls["init"] = kwargs
        return Run()

    fake = types.SimpleNamespace(init=init, config=types.SimpleNamespace(update=lambda values, **_: calls.update(
        config=values)))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setattr("accelerate.tracking._available_trackers", [*_available_trackers, LoggerType.WANDB])
    monkeypatch.delenv("WANDB_MODE", raising=False)
    raw = base_config(tiny_llama, qa_files, report_to="wandb")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    result = cli("run", tmp_path / "config.yaml", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert calls["init"] == {"project": "unlearn", "mode": "offline", "dir": str(tmp_path / "out" / "logs"),
                             "name": "out"}
    assert calls["config"]["method"] == "paper" and calls["config"]["train.lr"] == 1e-3 and calls["finished"]
    rows = read_jsonl(tmp_path / "out" / "train_log.jsonl")
    assert calls["log"] == [(row["step"], {f"train/{k}": v for k, v in row.items() if k != "step"}) for row in rows]


def test_a_tracker_whose_package_is_missing_fails_before_training(qa_files, tiny_llama, tmp_path, monkeypatch):
    from conftest import base_config

    monkeypatch.setattr("accelerate.tracking._available_trackers", [])  # as on a machine without wandb
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(base_config(tiny_llama, qa_files, report_to=["wandb"])))
    message = one_line_error(cli("run", tmp_path / "config.yaml", "-o", tmp_path / "out"))
    assert message == "train.report_to: wandb needs the wandb package, which is not installed (pip install wandb)"
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="report_to: none means no tracker"):
        load_config(raw=base_config(tiny_llama, qa_files, report_to=["none", "tensorboard"]))
    with pytest.raises(ConfigError, match=r"train.report_to.0: Input should be 'none', 'tensorboard' or 'wandb'"):
        load_config(raw=base_config(tiny_llama, qa_files, report_to="mlflow"))


# --- dry run ------------------------------------------------------------------------------------

def test_dry_run_loads_no_weights_and_prints_the_plan(project, tmp_path, monkeypatch):
    import safetensors.torch
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded")
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", refuse)
    monkeypatch.setattr(safetensors.torch, "load_file", refuse)
    monkeypatch.setattr("unlearn.run.load_model", refuse)
    result = cli("run", project / "config.yaml", "-o", tmp_path / "out", "--dry-run")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "dry run: checked, nothing trained, no weights loaded"
    text = result.stdout
    assert f"  data.forget: {(project / 'forget_set').resolve()}[train]: 3 rows" in lines  # after where:
    assert f"  data.normal[0]: {(project / 'normal.csv').resolve()}: 4 rows" in lines
    assert "method: paper: forget_ga 0.5, mismatch 1, kl_to_original 1" in lines
    assert "reference: the original is the same network with the LoRA adapters off (no copy)" in lines
    assert "steps: 3 (train.max_steps)" in lines
    assert "per micro-batch: 8 rows (2 forget, 4 mismatch, 2 normal), " in text and " answer tokens (mean of" in text
    assert "memory (an estimate: weights and training state; activations not counted): weights " in text
    assert f"outputs: {tmp_path / 'out'}/: config.yaml, train_log.jsonl, summary.json, model/, adapter/ (with " \
           "README.md, the model card), metrics.json, report.html, report.md, logs/ (tensorboard)" in lines
    assert not (tmp_path / "out").exists()


def test_dry_run_makes_the_runs_checks(project, tmp_path):
    raw = yaml.safe_load((project / "config.yaml").read_text())
    raw["data"]["forget"]["where"] = {"is_safe": "maybe"}
    (project / "bad.yaml").write_text(yaml.safe_dump(raw))
    message = one_line_error(cli("run", project / "bad.yaml", "-o", tmp_path / "out", "--dry-run"))
    assert message == f"{(project / 'forget_set').resolve()}[train]: no row has is_safe = 'maybe' (where:)"
