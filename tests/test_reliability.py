"""Every bad input of the README's reliability table, through the CLI: exit code 2 and one line
naming the file, line or field (no traceback unless --debug); failures during a run exit 1;
the divergence guard; security defaults; atomic writes."""
from __future__ import annotations

import json
import shutil
import socket
from collections import namedtuple
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import Result
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import base_config
from unlearn.cli import app
from unlearn.config import ConfigError
from unlearn.io import atomic_dir, atomic_write_text


def cli(*args) -> Result:
    return CliRunner().invoke(app, [*map(str, args)])


def write_config(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def assert_input_error(result, *fragments: str) -> str:
    """Exit 2, and stderr holds exactly one line, 'error: ...', with every fragment in it."""
    assert result.exit_code == 2, f"exit {result.exit_code}\n{result.output}"
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.fixture()
def run_config(tiny_llama, qa_files, tmp_path):
    return base_config(tiny_llama, qa_files)


# --- config --------------------------------------------------------------------------------------

def test_missing_config_file(tmp_path):
    assert_input_error(cli("run", tmp_path / "nope.yaml", "-o", tmp_path / "out"), "nope.yaml: config file not found")


def test_config_that_is_not_yaml_names_the_line(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("train:\n  lr: [1\n  seed: 2\n")
    assert_input_error(cli("run", path, "-o", tmp_path / "out"), "config.yaml:3: not valid YAML")


def test_unknown_config_key_lists_the_known_keys(run_config, tmp_path):
    result = cli("run", write_config(tmp_path, run_config), "-o", tmp_path / "out", "--set", "train.lrr=1")
    assert_input_error(result, "config.yaml: train.lrr: unknown key; known keys: lr, batch_size, ")


def test_override_without_equals_sign(run_config, tmp_path):
    result = cli("run", write_config(tmp_path, run_config), "-o", tmp_path / "out", "--set", "train.lr")
    assert_input_error(result, "--set 'train.lr': expected key=value")


# --- methods, objectives, weights, judges, templates ------------------------------------------------

@pytest.mark.parametrize("override,fragments", [
    ("method.name=foo", ["method.name: unknown method 'foo'; known: dpo, ga, ga_kl, graddiff, idk, npo, paper"]),
    ("method.weights.foo=1", ["method.weights: unknown objective 'foo'; known: dpo, forget_ga, kl_first_tokens, kl_to_original"]),
    ("method.weights.forget_ga=-1", ["method.weights", "weight of 'forget_ga' must be a non-negative number, got -1"]),
    ("method.weights.forget_ga=abc", ["method.weights.forget_ga: Input should be a valid number"]),
    ("method.weights.forget_ga=.inf", ["weight of 'forget_ga' must be a non-negative number, got inf"]),
    ("data.normal.weight=-1", ["data.normal.0.weight: Input should be greater than or equal to 0"]),
    ('eval={"tasks": [{"name": "harmful"}], "judge": {"kind": "gpt4"}}',
     ["eval", "judge.kind: Input should be 'embedding', 'reward' or 'classifier'"]),
    ('eval={"tasks": [{"name": "harmfull"}]}', ["expected tags: 'harmful', 'leak'"]),
    ('data.template="Q: {prompt} {context} A: {response}"', ["data.template", "template must be"]),
    ('select={"eval": {"tasks": [{"name": "hallucination"}]}}',
     ["select.eval.tasks.0.hallucination: forget: required key is missing (or give unseen:)"]),
], ids=["unknown-method", "unknown-objective", "negative-weight", "non-numeric-weight", "infinite-weight",
        "negative-source-weight", "unknown-judge", "unknown-eval-task", "template-with-unknown-field",
        "bad-validation-task"])
def test_unknown_names_and_bad_weights(override, fragments, run_config, tmp_path):
    result = cli("run", write_config(tmp_path, run_config), "-o", tmp_path / "out", "--set", override)
    assert_input_error(result, *fragments)
    assert not (tmp_path / "out").exists()  # nothing written for bad input


# --- data files ----------------------------------------------------------------------------------

def _bad_forget(tmp_path: Path, text: bytes | str, name: str = "forget.jsonl", key: str = "data.forget") -> dict:
    path = tmp_path / "bad" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return {f"{key}.path": str(path)}


ROW = '{"question": "Where does Bob live?", "answer": "Bob lives in Lima."}\n'
DATA_CASES = {
    "missing-data-file": (lambda t: {"data.forget.path": str(t / "nope.jsonl")},
                          ["nope.jsonl: data file not found (data.forget.path)"]),
    "malformed-jsonl-line": (lambda t: _bad_forget(t, ROW + '{"question": "x", answer: 1}\n'),
                             ["forget.jsonl:2: malformed JSON (Expecting property name"]),
    "jsonl-line-not-an-object": (lambda t: _bad_forget(t, ROW + '["x", "y"]\n'),
                                 ["forget.jsonl:2: expected a JSON object, got list"]),
    "malformed-json-file": (lambda t: _bad_forget(t, '[\n {"question": "a",\n "answer": }\n]', "forget.json"),
                            ["forget.json:3: malformed JSON"]),
    "not-utf8": (lambda t: _bad_forget(t, ROW.encode() + '{"question": "caf\u00e9?", "answer": "x"}\n'.encode("latin-1")),
                 ["forget.jsonl:2: not UTF-8 text (byte 0xe9)"]),
    "unknown-field": (lambda t: {"data.forget.prompt": "prompt"},
                      ["forget.jsonl: unknown field 'prompt'; fields are: question, answer"]),
    "row-missing-a-field": (lambda t: _bad_forget(t, ROW + '{"question": "Who?"}\n'),
                            ["forget.jsonl:2: no field 'answer' in this row (it has: question)"]),
    "field-not-text": (lambda t: _bad_forget(t, ROW + '{"question": "Who?", "answer": {"a": 1}}\n'),
                       ["forget.jsonl:2: field 'answer' is a dict, expected text"]),
    "empty-after-filtering": (lambda t: _bad_forget(t, '{"question": "Who?", "answer": "  "}\n{"question": "", "answer": "x"}\n'),
                              ["forget.jsonl: no usable rows (empty file, or every row has an empty 'question' or 'answer')"]),
    "empty-file": (lambda t: _bad_forget(t, ""), ["forget.jsonl: no usable rows"]),
    "skip-past-the-end": (lambda t: {"data.forget.skip": 100}, ["forget.jsonl: no usable rows"]),
    "unknown-extension": (lambda t: _bad_forget(t, "x", "forget.xlsx"),
                          ["cannot tell the format from the extension '.xlsx'"]),
    "malformed-csv": (lambda t: _bad_forget(t, 'Question,Best Answer\n"unclosed,x\n', "normal.csv", "data.normal"),
                      ["normal.csv:2: malformed CSV (unexpected end of data)"]),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_bad_data_file(case, run_config, tmp_path):
    make, fragments = DATA_CASES[case]
    overrides = [f"{key}={json.dumps(value)}" for key, value in make(tmp_path).items()]
    result = cli("run", write_config(tmp_path, run_config), "-o", tmp_path / "out",
                 *[arg for o in overrides for arg in ("--set", o)])
    assert_input_error(result, *fragments)
    assert not (tmp_path / "out").exists()


def test_every_row_longer_than_max_length(run_config, tmp_path):
    run_config["data"]["max_length"] = 9  # the chat template alone is longer
    assert_input_error(cli("run", write_config(tmp_path, run_config), "-o", tmp_path / "out"),
                       "every row is longer than data.max_length=9")


# --- models --------------------------------------------------------------------------------------

def test_unknown_alias_lists_the_known_aliases(run_config, tmp_path):
    run_config["model"]["name"] = "smollm3-135m"
    assert_input_error(cli("run", write_config(tmp_path, run_config), "-o", tmp_path / "out"),
                       "smollm3-135m: not a known alias (smollm2-135m-instruct) or local path")


def test_missing_model_path(run_config, tmp_path):
    run_config["model"]["name"] = str(tmp_path / "models" / "nope")
    assert_input_error(cli("run", write_config(tmp_path, run_config), "-o", tmp_path / "out"),
                       "nope: not a model folder, .gguf file or known alias")


def test_model_that_is_not_a_causal_lm(run_config, tmp_path):
    from transformers import T5Config

    T5Config(vocab_size=64, d_model=8, d_ff=16, num_layers=1, num_heads=2, d_kv=4).save_pretrained(tmp_path / "t5")
    run_config["model"]["name"] = str(tmp_path / "t5")
    assert_input_error(cli("run", write_config(tmp_path, run_config), "-o", tmp_path / "out"),
                       "t5: model type 't5' is not a causal LM")


def test_pickle_weights_refused_unless_allow_pickle(run_config, tiny_llama, tmp_path):
    folder = tmp_path / "pickled"
    shutil.copytree(tiny_llama, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    torch.save(load_file(str(tiny_llama / "model.safetensors")), folder / "pytorch_model.bin")
    run_config["model"]["name"] = str(folder)
    config = write_config(tmp_path, run_config)
    assert_input_error(cli("run", config, "-o", tmp_path / "out"),
                       "weights are pickle files (*.bin)", "pass --allow-pickle")
    allowed = cli("run", config, "-o", tmp_path / "out", "--allow-pickle", "--set", "train.max_steps=1")
    assert allowed.exit_code == 0, allowed.output


def test_custom_code_never_runs_without_trust_remote_code(run_config, tmp_path):
    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "custom", "auto_map": {
        "AutoConfig": "configuration_custom.CustomConfig", "AutoModelForCausalLM": "modeling_custom.CustomModel"}}))
    (folder / "configuration_custom.py").write_text(
        "from pathlib import Path\nPath(__file__).with_name('RAN').write_text('code ran')\n")
    run_config["model"]["name"] = str(folder)
    assert_input_error(cli("run", write_config(tmp_path, run_config), "-o", tmp_path / "out"),
                       "ships its own Python code", "--trust-remote-code")
    assert not (folder / "RAN").exists()


def test_hub_id_offline_fails_without_touching_the_network(run_config, tmp_path, monkeypatch):
    attempts = []

    def no_network(self, address):
        attempts.append(address)
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run_config["model"]["name"] = "some-org/some-model"
    assert_input_error(cli("run", write_config(tmp_path, run_config), "-o", tmp_path / "out"),
                       "some-org/some-model: not in the local Hugging Face cache and HF_HUB_OFFLINE=1")
    assert attempts == []


# --- the output folder ---------------------------------------------------------------------------

def test_output_dir_that_holds_a_run(run_config, tmp_path):
    config = write_config(tmp_path, {**run_config, "train": {**run_config["train"], "max_steps": 1}})
    assert cli("run", config, "-o", tmp_path / "out").exit_code == 0
    assert_input_error(cli("run", config, "-o", tmp_path / "out"),
                       "out: already holds a run (config.yaml); pass --overwrite to replace it or --resume")
    assert cli("run", config, "-o", tmp_path / "out", "--overwrite").exit_code == 0
    assert cli("run", config, "-o", tmp_path / "out", "--resume").exit_code == 0


def test_resume_with_a_different_config(run_config, tmp_path):
    config = write_config(tmp_path, {**run_config, "train": {**run_config["train"], "max_steps": 1}})
    assert cli("run", config, "-o", tmp_path / "out").exit_code == 0
    assert_input_error(cli("run", config, "-o", tmp_path / "out", "--resume", "--set", "train.lr=0.5"),
                       "config.yaml: train.lr differs from this run's config")
    assert cli("run", config, "-o", tmp_path / "out", "--resume", "--set", "train.max_steps=2").exit_code == 0


def test_output_dir_inside_an_input(run_config, tiny_llama, tmp_path):
    config = write_config(tmp_path, run_config)
    assert_input_error(cli("run", config, "-o", tiny_llama / "out"), "is inside the model folder")
    # chaining runs: the input model is OUTPUT/model, which the run would replace
    run_config["model"]["name"] = str(tmp_path / "previous" / "model")
    shutil.copytree(tiny_llama, tmp_path / "previous" / "model")
    assert_input_error(cli("run", write_config(tmp_path, run_config), "-o", tmp_path / "previous"),
                       "the run would write or replace", "which holds the input")


def test_not_enough_disk(run_config, tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr("unlearn.preflight.shutil.disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    assert_input_error(cli("run", write_config(tmp_path, run_config), "-o", tmp_path / "out"),
                       "out: 0.0 MiB free, the run needs about ", " MiB (saved model and checkpoints)")


# --- exit codes and tracebacks -------------------------------------------------------------------

def test_failure_during_the_run_exits_1(run_config, tmp_path, monkeypatch):
    def broken_train(*args, **kwargs):
        raise RuntimeError("CUDA error: device-side assert triggered\nmore detail")

    monkeypatch.setattr("unlearn.run.train", broken_train)
    result = cli("run", write_config(tmp_path, run_config), "-o", tmp_path / "out")
    assert result.exit_code == 1
    assert ("error: run failed: RuntimeError: CUDA error: device-side assert triggered "
            "(rerun with --debug for details)") in result.stderr
    assert "Traceback" not in result.output and "more detail" not in result.output


def test_debug_shows_the_traceback(tmp_path):
    result = cli("--debug", "run", tmp_path / "nope.yaml", "-o", tmp_path / "out")
    assert isinstance(result.exception, ConfigError)  # raised, not caught: python prints the traceback


# --- divergence guard ----------------------------------------------------------------------------

def test_kl_above_max_kl_stops_and_keeps_the_last_good_checkpoint(run_config, tmp_path):
    out = tmp_path / "out"
    result = cli("run", write_config(tmp_path, run_config), "-o", out, "--set", "train.max_kl=1e-6",
                 "--set", "train.save_every=1", "--set", "train.max_steps=4")
    assert result.exit_code == 1
    # step 1 starts from the original model (KL 0, up to float noise); after one update it is ~1e-4
    assert "error: run diverged at step 2: KL" in result.stderr and "> max_kl 1e-06" in result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["diverged"] is True and summary["restored_step"] == 1 and summary["steps"] == 1
    assert "output restored from the last good checkpoint (step 1)" in summary["stop_reason"]
    saved = load_file(str(out / "model" / "model.safetensors"))
    good = load_file(str(out / "checkpoints" / "step-1" / "trainable.safetensors"))
    assert all(torch.equal(saved[name], value) for name, value in good.items() if name in saved)
    assert "model.embed_tokens.weight" in saved.keys() & good.keys()
    assert [r["step"] for r in map(json.loads, (out / "train_log.jsonl").read_text().splitlines())] == [1]


def test_non_finite_loss_stops_the_run(run_config, tmp_path):
    out = tmp_path / "out"
    result = cli("run", write_config(tmp_path, run_config), "-o", out, "--set", "train.lr=1e30",
                 "--set", "train.grad_clip=null", "--set", "train.max_steps=5")
    assert result.exit_code == 1
    assert "non-finite loss" in result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["diverged"] is True and summary["restored_step"] is None
    assert "no earlier checkpoint (set train.save_every)" in summary["stop_reason"]


# --- atomic writes -------------------------------------------------------------------------------

def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    target = atomic_write_text(tmp_path / "metrics.json", "old")

    class Boom(Exception):
        pass

    def fail(*args):
        raise Boom

    monkeypatch.setattr("unlearn.io.os.replace", fail)
    with pytest.raises(Boom):
        atomic_write_text(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_atomic_dir_appears_whole_or_not_at_all(tmp_path):
    with atomic_dir(tmp_path / "model") as tmp:
        (tmp / "weights").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "model") as tmp:
            (tmp / "weights").write_text("half")
            raise RuntimeError("killed mid-save")
    assert (tmp_path / "model" / "weights").read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_written_files_follow_the_umask(tmp_path):
    import os
    import stat

    from unlearn.io import atomic_dir, atomic_write_text

    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "report.html", "x")
        with atomic_dir(tmp_path / "plots") as folder:
            (folder / "a.png").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "plots").stat().st_mode) == 0o755
