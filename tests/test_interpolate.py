"""`unlearn interpolate`: W_original + a * (W_run - W_original), evaluated and collected like a run."""
from __future__ import annotations

import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from conftest import base_config
from unlearn.cli import app
from unlearn.config import load_config
from unlearn.run import run
from test_compare import compare_config  # noqa: F401 - the fixture


def weights(folder) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(str(folder)).state_dict().items()}


@pytest.fixture()
def finished_run(compare_config, tmp_path):  # noqa: F811 - the fixture above
    raw = yaml.safe_load(compare_config.read_text())
    raw["train"]["lr"] = 5e-2  # a visible update in two steps
    raw["output"] = {"save": "both"}
    run(load_config(raw=raw), tmp_path / "run")
    return tmp_path / "run"


def test_points_lie_on_the_line_from_the_original_to_the_run(finished_run, tiny_llama, tmp_path):
    result = CliRunner().invoke(app, ["interpolate", str(finished_run), "-f", "0.5", "-f", "1", "-f", "2",
                                      "-o", str(tmp_path / "pts"), "--no-eval"])
    assert result.exit_code == 0, result.output
    start, end = weights(tiny_llama), weights(finished_run / "model")
    changed = [k for k in start if not torch.equal(start[k], end[k])]
    assert changed  # the run moved the weights
    for factor in (0.5, 1.0, 2.0):
        point = weights(tmp_path / "pts" / f"run-x{factor:g}" / "model")
        for key in start:  # every tensor, hand formula
            assert torch.allclose(point[key], start[key] + factor * (end[key] - start[key]), atol=1e-6), key
    summary = json.loads((tmp_path / "pts" / "run-x0.5" / "summary.json").read_text())
    assert summary["interpolated"] == {"from": str(finished_run.resolve()), "factor": 0.5}
    assert not (tmp_path / "pts" / "run-x0.5" / "metrics.json").exists()  # --no-eval


def test_adapter_only_run_gives_the_same_points(finished_run, tmp_path):
    adapter_run = tmp_path / "adapter-run"
    adapter_run.mkdir()
    for name in ("config.yaml", "summary.json"):
        (adapter_run / name).write_bytes((finished_run / name).read_bytes())
    (adapter_run / "adapter").symlink_to(finished_run / "adapter")
    from unlearn.interpolate import interpolate

    [merged_point] = interpolate(finished_run, [0.5], tmp_path / "a", evaluate=False)
    [adapter_point] = interpolate(adapter_run, [0.5], tmp_path / "b", evaluate=False)
    a, b = weights(merged_point / "model"), weights(adapter_point / "model")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_evaluated_points_join_the_run_on_one_leaderboard(finished_run, tmp_path):
    result = CliRunner().invoke(app, ["interpolate", str(finished_run), "-f", "0.5", "-o", str(tmp_path / "pts")])
    assert result.exit_code == 0, result.output
    point = tmp_path / "pts" / "run-x0.5"
    metrics = json.loads((point / "metrics.json").read_text())
    assert set(metrics) == {"before", "after", "directions"} and "similarity_to_original@normal" in metrics["after"]
    assert (point / "generations.jsonl").is_file() and (point / "report.html").is_file()
    board_dir = tmp_path / "board"
    result = CliRunner().invoke(app, ["leaderboard", str(finished_run), str(point), "-o", str(board_dir)])
    assert result.exit_code == 0, result.output
    board = json.loads((board_dir / "leaderboard.json").read_text())
    assert board["methods"] == ["run", "run-x0.5"]
    assert "| run-x0.5 | " in (board_dir / "leaderboard.md").read_text()
    assert ", update x0.5 |" in (board_dir / "leaderboard.md").read_text()  # the settings table says so
    # a second call refuses to replace the folder unless asked
    again = CliRunner().invoke(app, ["interpolate", str(finished_run), "-f", "0.5", "-o", str(tmp_path / "pts")])
    assert again.exit_code == 2 and "already exists; pass --overwrite" in again.output


def test_bad_input_is_one_line(tiny_llama, qa_files, tmp_path):
    raw = base_config(tiny_llama, qa_files, max_steps=1)
    raw["output"] = {"save": "none"}
    run(load_config(raw=raw), tmp_path / "unsaved")
    for args, message in (([str(tmp_path / "unsaved"), "-f", "0.5"], "no model/ or adapter/ to interpolate"),
                          ([str(tmp_path / "unsaved"), "-f", "-1"], "must be a positive number"),
                          ([str(tmp_path / "nowhere"), "-f", "0.5"], "not a finished `unlearn run` output folder")):
        result = CliRunner().invoke(app, ["interpolate", *args, "-o", str(tmp_path / "out")])
        assert result.exit_code == 2, result.output
        assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_scale_update_by_hand():
    from peft import LoraConfig, get_peft_model

    from unlearn.models.prepare import scale_update

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(2, 2, bias=False)

        def forward(self, x):
            return self.proj(x)

    # full fine-tune: W_original + s * (W - W_original), parameter by parameter
    original, model = Net(), Net()
    with torch.no_grad():
        original.proj.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        model.proj.weight.copy_(torch.tensor([[2.0, 0.0], [1.0, 1.0]]))
    scale_update(model, 1.5, original)
    assert torch.equal(model.proj.weight, torch.tensor([[2.5, 0.0], [1.5, 1.0]]))
    # LoRA: the original is the adapters off, so B times s gives W0 + s * (alpha / r) * B @ A
    base = Net()
    peft = get_peft_model(base, LoraConfig(r=1, lora_alpha=2, target_modules=["proj"]))
    layer = peft.base_model.model.proj
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(torch.tensor([[1.0, 2.0]]))
        layer.lora_B["default"].weight.copy_(torch.tensor([[0.5], [-1.0]]))
    x = torch.tensor([[1.0, 1.0]])
    w0 = layer.base_layer.weight.detach().clone()
    scale_update(peft, 3.0, None)
    delta = 2.0 * torch.tensor([[0.5], [-1.0]]) @ torch.tensor([[1.0, 2.0]])  # (alpha / r) B A before scaling
    assert torch.allclose(peft(x), x @ (w0 + 3.0 * delta).T, atol=1e-6)
    assert torch.equal(layer.base_layer.weight, w0)  # the base weights are untouched
    with pytest.raises(ValueError, match="no LoRA B matrices"):
        scale_update(Net(), 2.0, None)


@pytest.mark.parametrize("lora", [True, False])
def test_update_scale_in_the_run_is_the_interpolated_point(compare_config, tmp_path, lora):
    # output.update_scale: 2 saves (and evaluates) what `unlearn interpolate -f 2` makes of the same run
    raw = yaml.safe_load(compare_config.read_text())
    raw["train"]["lr"] = 5e-2
    raw["output"] = {"save": "merged"}
    raw.pop("eval")
    if not lora:
        raw["model"].pop("lora")
    run(load_config(raw=raw), tmp_path / "plain")
    from unlearn.interpolate import interpolate

    [point] = interpolate(tmp_path / "plain", [2.0], tmp_path / "pts", evaluate=False)
    raw["output"]["update_scale"] = 2.0
    result = run(load_config(raw=raw), tmp_path / "scaled")
    assert result.summary["update_scale"] == 2.0
    plain, scaled, expected = (weights(p) for p in (tmp_path / "plain" / "model", tmp_path / "scaled" / "model",
                                                     point / "model"))
    assert any(not torch.allclose(plain[k], scaled[k], atol=1e-6) for k in plain)  # the scale changed them
    for key in expected:
        assert torch.allclose(scaled[key], expected[key], atol=1e-5), key
