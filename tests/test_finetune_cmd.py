"""`unlearn finetune` (unlearn.finetune): the set-up fine-tune that makes a model memorise data.
The loss falls, the saved folder reloads with from_pretrained and holds the trained weights, and
bad input fails with one line naming the file, field or folder before any weights are loaded."""
from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from conftest import SENTENCES, write_jsonl
from test_reliability import assert_input_error
from unlearn.cli import app
from unlearn.finetune import parse_data, run_finetune


def cli(*args):
    return CliRunner().invoke(app, [*map(str, args)])


@pytest.fixture()
def book(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("\n\n".join(" ".join(SENTENCES[i:] + SENTENCES[:i]) for i in range(4)))
    return path


def answer_nll(model, rows, pad_id) -> float:
    from unlearn.data.encoding import pad_rows

    with torch.no_grad():
        return model(**pad_rows(rows, pad_id)).loss.item()


def test_loss_falls_and_the_saved_folder_reloads_with_the_trained_weights(tiny_llama, book, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from unlearn.finetune import encode_rows

    source = parse_data({"path": str(book), "window_tokens": 16, "prompt_tokens": 4, "limit": 6})
    result = run_finetune(str(tiny_llama), [source], tmp_path / "leaky", epochs=12, lr=1e-2, batch_size=3)
    assert result.rows == 6 and len(result.epoch_losses) == 12
    assert result.epoch_losses[-1] < 0.5 * result.epoch_losses[0]

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "leaky")
    rows = encode_rows(source, tokenizer, "auto", 256)
    before = answer_nll(AutoModelForCausalLM.from_pretrained(tiny_llama), rows, tokenizer.pad_token_id)
    after = answer_nll(AutoModelForCausalLM.from_pretrained(tmp_path / "leaky"), rows, tokenizer.pad_token_id)
    assert after < 0.5 * before
    summary = json.loads((tmp_path / "leaky" / "finetune.json").read_text())
    assert summary["rows"] == 6 and summary["data"][0]["limit"] == 6 and len(summary["epoch_losses"]) == 12


def test_cli_on_question_answer_fields_and_overwrite(tiny_llama, tmp_path):
    qa = write_jsonl(tmp_path / "qa.jsonl", [{"q": s, "a": t} for s, t in zip(SENTENCES[::2], SENTENCES[1::2])])
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    args = ["finetune", "--model", tiny_llama, "--data", qa, "--prompt", "q", "--response", "a",
            "--epochs", 1, "--lr", 1e-3, "-o", out]
    assert_input_error(cli(*args), f"{out}: is not empty; pass --overwrite")
    result = cli(*args, "--overwrite")
    assert result.exit_code == 0, result.output
    assert (out / "model.safetensors").is_file() and not (out / "old.txt").exists()
    assert json.loads((out / "finetune.json").read_text())["rows"] == 7


@pytest.mark.parametrize("case", ["missing-file", "unknown-field", "bad-mapping-key", "bad-window", "zero-epochs",
                                  "bad-template", "output-is-the-model", "output-inside-the-model", "missing-model"])
def test_bad_input_is_one_line(case, tiny_llama, book, tmp_path):
    qa = write_jsonl(tmp_path / "qa.jsonl", [{"q": "a question", "a": "an answer"}])
    args = {"--model": tiny_llama, "--data": book, "--epochs": 1, "--lr": 1e-3, "-o": tmp_path / "out"}
    expected = {
        "missing-file": ({"--data": tmp_path / "nope.txt"}, f"{tmp_path / 'nope.txt'}: data file not found"),
        "unknown-field": ({"--data": qa}, "qa.jsonl: unknown field 'prompt'; fields are: q, a"),
        "bad-mapping-key": ({"--data": f"{{path: {book}, skp: 1}}"},
                            f"--data {book}: skp: unknown key; known keys: path"),
        "bad-window": ({"--data": f"{{path: {book}, window_tokens: 8, prompt_tokens: 8}}"},
                       "prompt_tokens must be smaller than window_tokens"),
        "zero-epochs": ({"--epochs": 0}, "--epochs must be positive, got 0"),
        "bad-template": ({"--template": "Q: {question}"}, "--template: template must be 'auto', 'raw', or"),
        "output-is-the-model": ({"-o": tiny_llama}, "would write over or inside the input"),
        "output-inside-the-model": ({"-o": tiny_llama / "sub"}, "would write over or inside the input"),
        "missing-model": ({"--model": tmp_path / "nope"}, "nope: not a model folder"),
    }
    changes, fragment = expected[case]
    args.update(changes)
    weights = (tiny_llama / "model.safetensors").read_bytes()
    extra = ["--overwrite"] if case.startswith("output") else []  # --overwrite never reaches an input
    assert_input_error(cli("finetune", *[x for pair in args.items() for x in pair], *extra), fragment)
    assert (tiny_llama / "model.safetensors").read_bytes() == weights
    assert not (tmp_path / "out").exists()


def test_copyright_preset_is_a_valid_config():
    """The preset loads without its data (users without ../shared/data still get a valid config), and
    the chapters it unlearns are the windows its set-up command fine-tunes on."""
    from pathlib import Path

    from unlearn.config import load_config

    preset = Path(__file__).parents[1] / "configs" / "presets" / "copyright.yaml"
    config = load_config(preset)
    forget = config.data.forget
    assert (forget.skip, forget.limit, forget.window_tokens, forget.prompt_tokens) == (1, 44, 128, 32)
    assert "skip: 1, limit: 44}' \\\n#        --window-tokens 128 --prompt-tokens 32" in preset.read_text()
