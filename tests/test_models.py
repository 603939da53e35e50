"""The original model is really the original; KL starts at zero; saved models reload as trained."""
from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from conftest import base_config
from unlearn.config import LoraConfig, load_config
from unlearn.data.batches import build_data
from unlearn.io import read_jsonl
from unlearn.models.loading import load_model
from unlearn.models.prepare import apply_lora, frozen_copy, num_layers, save_model
from unlearn.models.prepare import original_model
from unlearn.objectives.resolve import resolve_method
from unlearn.training.loop import train

PROBE = torch.tensor([[5, 17, 42, 99, 123, 7, 250, 3], [8, 64, 31, 2, 200, 150, 11, 9]])


def logits(model, ids=PROBE) -> torch.Tensor:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(input_ids=ids).logits.float()
    model.train(was_training)
    return out


def unlearn(folder, files, output_dir, lora: bool, **train_overrides):
    """The steps of `unlearn run`, keeping the trained model in memory."""
    raw = base_config(folder, files, **{"lr": 1e-2, **train_overrides})
    if lora:
        raw["model"]["lora"] = {"r": 4, "alpha": 8}
    config = load_config(raw=raw)
    model, tokenizer = load_model(config.model.name)
    method = resolve_method(config.method, num_layers(model))
    data = build_data(config.data, tokenizer, seed=config.train.seed, batch_size=config.train.batch_size,
                      normal_batch_size=config.train.batch_size, mismatch_k=method.knobs.mismatch_k)
    original = logits(model)
    reference = None
    if lora:
        model = apply_lora(model, config.model.lora)
    else:
        reference = frozen_copy(model)
    output_dir.mkdir(parents=True, exist_ok=True)
    result = train(model, data, method, config.train, output_dir, reference_model=reference)
    return model, tokenizer, result, original, reference


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_lora_with_adapters_disabled_is_the_original(arch, request):
    model, _ = load_model(str(request.getfixturevalue(f"tiny_{arch}")))
    original = logits(model)
    model = apply_lora(model, LoraConfig(r=4, alpha=8))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)  # a trained-looking adapter
    assert (logits(model) - original).abs().max() > 1e-3
    model.train()  # as during training: GPT-2's dropout is active
    with torch.no_grad(), original_model(model, None) as reference:
        during = reference(input_ids=PROBE).logits
    torch.testing.assert_close(during, original, atol=1e-6, rtol=1e-6)  # no adapter, no dropout noise
    assert model.training  # the training mode is restored afterwards
    copy = object()
    with original_model(model, copy) as reference:  # a full fine-tune reads the frozen copy
        assert reference is copy


def test_lora_init_noise_gives_a_seeded_random_start(tiny_llama):
    def lora_b(noise):
        model, _ = load_model(str(tiny_llama))
        model = apply_lora(model, LoraConfig(r=4, alpha=8, init_noise=noise))
        return torch.cat([p.flatten() for n, p in model.named_parameters() if "lora_B" in n]), model

    zero, _ = lora_b(0.0)
    assert torch.count_nonzero(zero) == 0  # peft's start: the original exactly
    noisy, model = lora_b(1e-3)
    assert noisy.std().item() == pytest.approx(1e-3, rel=0.1)
    torch.testing.assert_close(lora_b(1e-3)[0], noisy, atol=0, rtol=0)  # seeded: the same start every run
    assert all(p.requires_grad for n, p in model.named_parameters() if "lora_B" in n)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt"])
def test_lora_run_saves_merged_and_adapter_that_reload_as_trained(arch, request, qa_files, tmp_path):
    folder = request.getfixturevalue(f"tiny_{arch}")
    model, tokenizer, result, original, _ = unlearn(folder, qa_files, tmp_path / "run", lora=True)
    if arch == "llama":  # no dropout: the first row is logged before any update, so current == original
        assert result.log[0]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert [r["step"] for r in read_jsonl(tmp_path / "run" / "train_log.jsonl")] == [1, 2, 3]
    trained = logits(model)
    assert (trained - original).abs().max() > 1e-4  # training changed the model: the checks below bite

    paths = save_model(model, tokenizer, tmp_path / "run", "both")
    assert set(paths) == {"model", "adapter"}
    merged = AutoModelForCausalLM.from_pretrained(paths["model"])
    assert not hasattr(merged, "peft_config")
    torch.testing.assert_close(logits(merged), trained, atol=1e-5, rtol=1e-4)
    base = AutoModelForCausalLM.from_pretrained(str(folder))
    adapter = PeftModel.from_pretrained(base, paths["adapter"])
    torch.testing.assert_close(logits(adapter), trained, atol=1e-5, rtol=1e-4)
    with adapter.disable_adapter():  # the saved adapter sits on the untouched base
        torch.testing.assert_close(logits(adapter), original, atol=1e-6, rtol=1e-6)


def test_full_finetune_kl_starts_at_zero_and_merged_model_reloads(tiny_llama, qa_files, tmp_path):
    model, tokenizer, result, original, reference = unlearn(tiny_llama, qa_files, tmp_path / "run", lora=False,
                                                            lr=1e-3)
    assert result.log[0]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert result.log[-1]["kl"] > 1e-6  # the model moved away from the frozen copy
    torch.testing.assert_close(logits(reference), original)  # the frozen copy did not train
    assert all(not p.requires_grad for p in reference.parameters())
    trained = logits(model)
    assert (trained - original).abs().max() > 1e-4
    paths = save_model(model, tokenizer, tmp_path / "run", "merged")
    torch.testing.assert_close(logits(AutoModelForCausalLM.from_pretrained(paths["model"])), trained,
                               atol=1e-6, rtol=1e-6)


def test_finetune_batches_cover_each_row_once_and_group_lengths():
    import random

    from unlearn.data.encoding import Encoded
    from unlearn.training.finetune import epoch_batches

    rows = [Encoded([1, 2], [3] * length) for length in [1, 40, 2, 39, 3, 38, 4, 37] * 4]
    batches = epoch_batches(rows, 4, random.Random(0), group=8)
    assert sorted(i for b in batches for i in b) == list(range(len(rows)))
    assert all(len(b) == 4 for b in batches)
    # within one window, lengths are sorted into batches: no batch mixes short and long rows
    assert all(max(len(rows[i].answer_ids) for i in b) - min(len(rows[i].answer_ids) for i in b) < 30 for b in batches)
    assert epoch_batches(rows, 4, random.Random(0)) == batches


def test_finetune_teaches_the_answers(tiny_llama):
    from unlearn.data.encoding import PairEncoder
    from unlearn.training.finetune import finetune

    model, tokenizer = load_model(str(tiny_llama))
    encoder = PairEncoder(tokenizer, "auto", 64)
    rows = [encoder.encode(f"question {i}", f"answer number {i}") for i in range(6)]
    losses = finetune(model, rows, tokenizer.pad_token_id, epochs=10, lr=1e-2, batch_size=4, bf16=False)
    assert len(losses) == 10 and losses[-1] < 0.5 * losses[0]
    assert not model.training


def test_finetune_answer_loss_equals_the_models_own_loss(tiny_llama):
    """The head fed only answer positions gives the same mean NLL as `labels=` over every position."""
    from unlearn.data.encoding import PairEncoder, pad_rows
    from unlearn.training.finetune import answer_loss

    model, tokenizer = load_model(str(tiny_llama))
    encoder = PairEncoder(tokenizer, "auto", 64)
    rows = [encoder.encode(f"question {i}", "answer " * (i + 1)) for i in range(4)]
    batch = pad_rows(rows, tokenizer.pad_token_id)
    with torch.no_grad():
        expected = model(**batch).loss
        got = answer_loss(model, batch)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt"])
def test_finetune_shared_prefix_gives_the_plain_loss_and_gradients(arch, request, monkeypatch):
    """The rows' common leading tokens run once (a key/value cache repeated over the rows): same loss
    and same gradients as every row run whole."""
    from unlearn.data.encoding import PairEncoder, pad_rows
    from unlearn.models.prefix import MIN_SHARED_PREFIX, shared_prefix
    from unlearn.objectives import forward
    from unlearn.training import finetune
    from unlearn.training.finetune import answer_loss

    monkeypatch.setattr(finetune, "BUCKET_COST_TOKENS", 0)  # 4 tiny rows: sharing pays here only by fiat
    shared = []
    run = forward.prefix_shared_forward
    monkeypatch.setattr(finetune, "prefix_shared_forward", lambda *a, **k: shared.append(a[3]) or run(*a, **k))

    model, tokenizer = load_model(str(request.getfixturevalue(f"tiny_{arch}")))
    template = "auto" if arch == "llama" else "### Question: {prompt}\n### Answer: {response}"
    encoder = PairEncoder(tokenizer, template, 64)
    batch = pad_rows([encoder.encode(f"question {i} about", "answer " * (i + 1)) for i in range(4)],
                     tokenizer.pad_token_id)
    assert shared_prefix(batch["input_ids"], batch["attention_mask"], 99) >= MIN_SHARED_PREFIX  # the shared path runs
    model.eval()  # no dropout: both sides see the same network
    results = []
    for share in (False, True):
        model.zero_grad()
        loss = answer_loss(model, batch, share_prefix=share)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    assert shared  # the shared side did take the cache path
    (plain, plain_grads), (with_prefix, prefix_grads) = results
    torch.testing.assert_close(with_prefix, plain, atol=1e-6, rtol=1e-6)
    for a, b in zip(prefix_grads, plain_grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_shared_prefix_stops_before_the_first_position_read():
    ids = torch.tensor([[1, 2, 3, 4, 5, 6], [1, 2, 3, 9, 9, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]])
    from unlearn.models.prefix import shared_prefix

    assert shared_prefix(ids, mask, first_read=5) == 3  # rows differ from token 3 on
    assert shared_prefix(ids, mask, first_read=2) == 2  # position 2's output is read: it must run per row
    assert shared_prefix(ids[:1], mask[:1], first_read=9) == 5  # one row: all but the last token


def test_master_weights_keep_float32_updates_that_bfloat16_would_round_away():
    """An update below bfloat16's resolution (1 + 1e-4 rounds to 1) accumulates in the float32
    master and the model ends in float32 holding the masters."""
    from unlearn.training.finetune import MasterWeights

    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    masters = MasterWeights([model.weight])
    assert model.weight.dtype == torch.bfloat16 and masters.masters[0].dtype == torch.float32
    optimizer = torch.optim.SGD(masters.masters, lr=1e-4)
    for _ in range(10):
        model(torch.ones(1, 2, dtype=torch.bfloat16)).sum().mul(-1).backward()  # gradient -1: w grows by lr
        masters.gradients_to_masters()
        assert model.weight.grad is None and masters.masters[0].grad.dtype == torch.float32
        optimizer.step()
        optimizer.zero_grad()
        masters.masters_to_model()
    assert float(model.weight.detach()[0, 0]) == 1.0  # bfloat16 cannot hold 1.001
    masters.restore_float32(model)
    assert model.weight.dtype == torch.float32
    torch.testing.assert_close(model.weight, torch.full((1, 2), 1.001), atol=1e-6, rtol=0)


def test_finetune_in_bfloat16_teaches_and_ends_in_float32(tiny_llama):
    from unlearn.data.encoding import PairEncoder
    from unlearn.training.finetune import finetune

    model, tokenizer = load_model(str(tiny_llama))
    encoder = PairEncoder(tokenizer, "auto", 64)
    rows = [encoder.encode(f"question {i}", f"answer number {i}") for i in range(6)]
    losses = finetune(model, rows, tokenizer.pad_token_id, epochs=10, lr=1e-2, batch_size=4, bf16=True)
    assert losses[-1] < 0.5 * losses[0]
    assert all(p.dtype == torch.float32 for p in model.parameters())
