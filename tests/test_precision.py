"""`auto` precision: bf16 only where the device multiplies it natively; an explicit choice is kept."""
from __future__ import annotations

import logging

import pytest
import torch

from unlearn.models import precision
from unlearn.models.precision import native_bf16, resolve_mixed_precision


@pytest.fixture()
def device_has(monkeypatch):
    """Pretend the device has (True) or lacks (False) native bf16."""
    def set_native(value: bool) -> None:
        monkeypatch.setattr(precision, "native_bf16", lambda: value)
        precision.warn_emulated.cache_clear()
    return set_native


def test_auto_takes_bf16_only_where_it_is_native(device_has):
    device_has(True)
    assert resolve_mixed_precision("auto") == "bf16"
    device_has(False)
    assert resolve_mixed_precision("auto") == "no"


def test_an_explicit_choice_is_kept_and_emulated_bf16_is_warned_about(device_has, caplog):
    device_has(False)
    with caplog.at_level(logging.WARNING, logger="unlearn.models.precision"):
        assert resolve_mixed_precision("bf16") == "bf16"
        assert resolve_mixed_precision("no") == "no" and resolve_mixed_precision("fp16") == "fp16"
    assert sum("slower than float32" in r.getMessage() for r in caplog.records) == 1
    device_has(True)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="unlearn.models.precision"):
        assert resolve_mixed_precision("bf16") == "bf16"
    assert not caplog.records


def test_native_bf16_reads_the_cpu_flags_torch_reports(monkeypatch):
    native_bf16.cache_clear()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert native_bf16() is False
    native_bf16.cache_clear()
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert native_bf16() is True
    native_bf16.cache_clear()


def test_the_config_accepts_auto_and_the_accelerator_resolves_it(tiny_llama, qa_files, device_has):
    from conftest import base_config
    from unlearn.config import load_config
    from unlearn.training.distributed import make_accelerator

    assert load_config(raw=base_config(tiny_llama, qa_files, mixed_precision="auto")).train.mixed_precision == "auto"
    for native, expected in ((True, "bf16"), (False, "no")):
        device_has(native)
        assert make_accelerator("auto").mixed_precision == expected


def test_finetune_records_the_precision_it_ran_at_and_rejects_an_unknown_one(tiny_llama, tmp_path, device_has):
    import json

    from conftest import SENTENCES, write_jsonl
    from unlearn.finetune import FinetuneError, run_finetune

    qa = write_jsonl(tmp_path / "qa.jsonl", [{"prompt": s, "response": t} for s, t in zip(SENTENCES[:4], SENTENCES[4:8])])
    with pytest.raises(FinetuneError, match="--precision: 'fp8'"):
        run_finetune(str(tiny_llama), [str(qa)], tmp_path / "bad", epochs=1, lr=1e-3, precision="fp8")
    device_has(False)  # what auto resolves to is written down: the run can be repeated on another machine
    run_finetune(str(tiny_llama), [str(qa)], tmp_path / "auto", epochs=1, lr=1e-3, precision="auto")
    assert json.loads((tmp_path / "auto" / "finetune.json").read_text())["precision"] == "float32"
    run_finetune(str(tiny_llama), [str(qa)], tmp_path / "bf16", epochs=1, lr=1e-3, precision="bf16")
    assert json.loads((tmp_path / "bf16" / "finetune.json").read_text())["precision"] == "bf16"


def test_frozen_weights_are_bf16_inside_the_step_and_their_own_outside():
    from unlearn.models.precision import FrozenLowPrecision

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 4), torch.nn.Linear(4, 10, bias=False))
    model[2].weight = model[0].weight  # a tied head: stays float32 (the embedding feeds the residual stream)
    model[1].weight.requires_grad_(False)
    trainable = torch.nn.Linear(4, 4)
    before = model[1].weight.detach().clone()
    with FrozenLowPrecision(model, trainable):
        assert model[1].weight.dtype == torch.bfloat16
        assert torch.equal(model[1].weight, before.to(torch.bfloat16))  # what autocast would cast it to
        assert model[0].weight.dtype == torch.float32 and trainable.weight.dtype == torch.float32
    assert model[1].weight.dtype == torch.float32 and torch.equal(model[1].weight, before)  # exactly as it was


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_a_bf16_step_with_frozen_weights_cast_once_matches_autocast_casting_each_call(
        lora, tiny_llama, qa_files, tmp_path, monkeypatch):
    """Same losses, same trained weights: only the repeated casts are gone."""
    import contextlib

    from safetensors.torch import load_file

    from conftest import base_config
    from unlearn.config import load_config
    from unlearn.io import read_jsonl
    from unlearn.run import run
    from unlearn.training import loop

    held = []
    real = loop.FrozenLowPrecision
    monkeypatch.setattr(loop, "FrozenLowPrecision", lambda *models: held.append(real(*models)) or held[-1])
    results = []
    for name, cast_once in (("once", True), ("each-call", False)):
        if not cast_once:
            assert held and held[0].pairs  # the first run did hold frozen weights in bf16
            monkeypatch.setattr(loop, "FrozenLowPrecision", lambda *models: contextlib.nullcontext())
        raw = base_config(tiny_llama, qa_files, mixed_precision="bf16", max_steps=3)
        if lora:
            raw["model"]["lora"] = {"r": 4, "alpha": 8}
        run(load_config(raw=raw), tmp_path / name)
        losses = [r["loss"] for r in read_jsonl(tmp_path / name / "train_log.jsonl") if "loss" in r]
        results.append((losses, load_file(tmp_path / name / "model" / "model.safetensors")))
    (once, weights_once), (each, weights_each) = results
    assert once == pytest.approx(each, abs=1e-6)
    for key in weights_once:
        torch.testing.assert_close(weights_once[key], weights_each[key], atol=1e-6, rtol=1e-5)
