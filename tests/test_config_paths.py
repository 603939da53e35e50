"""Data paths in a config file are relative to the file and saved absolute."""
from __future__ import annotations

from pathlib import Path

import yaml

from conftest import base_config
from unlearn.config import dump_config, load_config


def test_paths_relative_to_the_config_file_become_absolute(tiny_llama, qa_files, tmp_path, monkeypatch):
    folder = tmp_path / "project"
    folder.mkdir()
    raw = base_config(tiny_llama, qa_files)
    raw["data"]["forget"]["path"] = "../forget.jsonl"  # relative to the config file
    raw["eval"] = {"tasks": [{"name": "utility", "normal": {"path": "../normal.csv", "prompt": "Question"}}]}
    raw["select"] = {"every": 1, "eval": {"tasks": [{"name": "utility",
                                                     "normal": {"path": "../normal.csv", "prompt": "Question"}}]}}
    (folder / "run.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path / "..")  # anywhere else
    config = load_config(folder / "run.yaml")
    assert config.data.forget.path == str(qa_files["forget"].resolve())
    assert config.eval.tasks[0].normal.path == str(qa_files["normal"].resolve())  # typed sections
    assert config.select.eval.tasks[0].normal.path == str(qa_files["normal"].resolve())
    saved = yaml.safe_load(dump_config(config))
    assert all(Path(p).is_absolute() for p in (saved["data"]["forget"]["path"], saved["data"]["normal"][0]["path"]))


def test_a_local_model_folder_is_found_beside_the_config(tiny_llama, qa_files, tmp_path, monkeypatch):
    folder = tmp_path / "project"
    folder.mkdir()
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "llama").symlink_to(Path(tiny_llama).resolve(), target_is_directory=True)
    raw = base_config(tiny_llama, qa_files)
    raw["model"]["name"] = "../models/llama"
    (folder / "run.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir("/")  # from here "../models/llama" names nothing; beside the config it does
    assert load_config(folder / "run.yaml").model.name == str(Path(tiny_llama).resolve())
    raw["model"]["name"] = "smollm2-135m-instruct"  # an alias stays an alias
    (folder / "alias.yaml").write_text(yaml.safe_dump(raw))
    assert load_config(folder / "alias.yaml").model.name == "smollm2-135m-instruct"


def test_an_unquoted_no_for_mixed_precision_means_no(tiny_llama, qa_files, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(base_config(tiny_llama, qa_files)).replace("train:\n", "train:\n  mixed_precision: no\n"))
    assert yaml.safe_load(path.read_text())["train"]["mixed_precision"] is False  # what YAML makes of it
    assert load_config(path).train.mixed_precision == "no"
    assert load_config(path, ["train.mixed_precision=no"]).train.mixed_precision == "no"


def test_a_runs_saved_config_runs_again_as_it_was(tiny_llama, qa_files, tmp_path):
    """config.yaml holds the method's knobs that were set, not every default (an unread knob is an
    error), so the file loads and resolves to the same method."""
    from unlearn.objectives.resolve import resolve_method

    raw = base_config(tiny_llama, qa_files)
    raw["method"] = {"name": "npo", "npo_beta": 0.3, "weights": {"retain_nll": 2.0}}
    config = load_config(raw=raw)
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(config))
    again = load_config(path)
    assert yaml.safe_load(path.read_text())["method"] == {"name": "npo", "weights": {"retain_nll": 2.0}, "npo_beta": 0.3}
    first, second = resolve_method(config.method, 2), resolve_method(again.method, 2)
    assert (first.weights, first.knobs) == (second.weights, second.knobs)
    assert again.model_dump(exclude={"method"}) == config.model_dump(exclude={"method"})
