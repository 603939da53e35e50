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
