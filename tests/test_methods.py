"""Methods on the tiny llama: idk's refusal targets, RMU's layer and reference activations (LoRA and
full fine-tune), and every registered method end to end with both."""
from __future__ import annotations

import pytest
import torch

from conftest import base_config
from unlearn.config import LoraConfig, MethodConfig, load_config
from unlearn.data.batches import build_data
from unlearn.io import read_jsonl
from unlearn.models.loading import load_model
from unlearn.models.prepare import apply_lora, frozen_copy
from unlearn.objectives.forward import step_forward
from unlearn.objectives.methods import DEFAULT_REFUSALS, METHODS, MethodError
from unlearn.objectives.resolve import resolve_method
from unlearn.objectives.losses import OBJECTIVES, rmu_direction
from unlearn.run import run


def method_data(tiny_llama, qa_files, **method):
    """The tiny model, its tokenizer, the resolved method and the data a run would build for it."""
    model, tokenizer = load_model(str(tiny_llama))
    config = load_config(raw={**base_config(tiny_llama, qa_files), "method": method})
    resolved = resolve_method(config.method, num_layers=2)
    data = build_data(config.data, tokenizer, seed=1, batch_size=2, normal_batch_size=2,
                      mismatch_k=resolved.knobs.mismatch_k if "mismatch" in resolved.weights else 0,
                      mismatch_answers=resolved.mismatch_answers)
    return model, tokenizer, resolved, data


def split_rows(batch, group: str) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, answer ids) of each row of `group`, padding removed."""
    rows = []
    for ids, mask, labels, row_group in zip(batch.input_ids, batch.attention_mask, batch.labels, batch.row_group):
        if row_group == group:
            ids, labels = ids[mask.bool()], labels[mask.bool()]
            rows.append((ids[labels == -100].tolist(), ids[labels != -100].tolist()))
    return rows


def answers(tokenizer, rows) -> list[str]:
    return [tokenizer.decode(answer, skip_special_tokens=True).strip() for _, answer in rows]


# --- idk -----------------------------------------------------------------------------------------

def test_idk_pairs_each_forget_prompt_with_one_refusal(tiny_llama, qa_files):
    _, tokenizer, method, data = method_data(tiny_llama, qa_files, name="idk")
    assert method.weights == {"forget_ga": 0.5, "mismatch": 1.0, "kl_to_original": 1.0}
    for step in range(3):
        batch = data.step_batch(step)
        forget, mismatch = split_rows(batch, "forget"), split_rows(batch, "mismatch")
        assert len(mismatch) == len(forget) == 2  # one refusal per forget row by default
        assert [prompt for prompt, _ in mismatch] == [prompt for prompt, _ in forget]
        assert set(answers(tokenizer, mismatch)) <= set(DEFAULT_REFUSALS)


def test_idk_uses_the_users_refusals_and_mismatch_k(tiny_llama, qa_files):
    _, tokenizer, _, data = method_data(tiny_llama, qa_files, name="idk", refusals=["No comment."], mismatch_k=3)
    batch = data.step_batch(0)
    assert answers(tokenizer, split_rows(batch, "mismatch")) == ["No comment."] * 6


def test_paper_mismatch_answers_come_from_the_normal_pool(tiny_llama, qa_files):
    _, tokenizer, method, data = method_data(tiny_llama, qa_files, name="paper")
    assert method.mismatch_answers is None and method.knobs.mismatch_k == 5  # K in the paper's code
    normal = {"The capital of France is Paris.", "Madrid is the capital of Spain.", "Shakespeare wrote Hamlet.",
              "Water boils at one hundred degrees."}
    assert set(answers(tokenizer, split_rows(data.step_batch(0), "mismatch"))) <= normal


# --- rmu -----------------------------------------------------------------------------------------

def perturb(model) -> None:
    """Stand-in for training: move every trainable weight (LoRA adapters, or all of a full model)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn(param.shape, generator=generator))


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_rmu_reads_the_chosen_layer_and_the_original_activations(lora, tiny_llama, qa_files):
    model, _, _, data = method_data(tiny_llama, qa_files, name="rmu")
    original = frozen_copy(model)  # what the model was before any update
    reference = None
    if lora:
        model = apply_lora(model, LoraConfig(r=2, alpha=4))
    else:
        reference = frozen_copy(model)
    batch = data.step_batch(0).select(("forget", "normal"))
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    forget_rows = [i for i, g in enumerate(batch.row_group) if g == "forget"]
    seen = []
    for layer in (0, 1):
        method = resolve_method(MethodConfig(name="rmu", rmu_layer=layer), num_layers=2)
        with torch.no_grad():
            out = step_forward(model, batch, method.needs, reference)
            expected = model(**inputs, output_hidden_states=True).hidden_states[layer + 1]
        torch.testing.assert_close(out.current.hidden[layer], expected)
        seen.append(out.current.hidden[layer])
        # before any update the model is the original: the retain term is zero, the forget term is
        # the masked MSE to the steering vector
        assert float(OBJECTIVES["rmu_retain"].fn(out, method.knobs)) == pytest.approx(0.0, abs=1e-10)
        hidden, mask = expected[forget_rows], batch.attention_mask[forget_rows].unsqueeze(-1).float()
        target = rmu_direction(hidden.shape[-1], 0, 6.5)
        by_hand = (((hidden - target) ** 2) * mask).sum() / (mask.sum() * hidden.shape[-1])
        assert float(OBJECTIVES["rmu_forget"].fn(out, method.knobs)) == pytest.approx(float(by_hand), rel=1e-5)
    assert not torch.allclose(seen[0], seen[1])  # the layer knob selects what is read

    perturb(model)
    method = resolve_method(MethodConfig(name="rmu", rmu_layer=1), num_layers=2)
    with torch.no_grad():
        out = step_forward(model, batch, method.needs, reference)
        untouched = original(**inputs, output_hidden_states=True).hidden_states[2]
    normal_rows = [i for i, g in enumerate(batch.row_group) if g == "normal"]
    # the reference is the original (adapters disabled, or the frozen copy), not the moved model
    torch.testing.assert_close(out.reference.group_hidden("normal", 1)[0], untouched[normal_rows])
    assert float(OBJECTIVES["rmu_retain"].fn(out, method.knobs)) > 1e-4


def test_rmu_layer_default_and_range():
    assert resolve_method(MethodConfig(name="rmu"), num_layers=32).knobs.rmu_layer == 10  # a third of the way up
    assert resolve_method(MethodConfig(name="rmu"), num_layers=2).knobs.rmu_layer == 0
    assert resolve_method(MethodConfig(name="rmu", rmu_layer=1), num_layers=2).needs.hidden_layers == {1}
    with pytest.raises(MethodError, match=r"method.rmu_layer: 2 is not a decoder layer of this model \(0..1\)"):
        resolve_method(MethodConfig(name="rmu", rmu_layer=2), num_layers=2)
    with pytest.raises(MethodError, match="rmu_layer: -1"):
        resolve_method(MethodConfig(name="rmu", rmu_layer=-1))
    # a knob the method does not read is an error (it used to be ignored), naming the knobs it reads
    with pytest.raises(MethodError, match=r"method.rmu_layer: 'npo' does not read .*\(its knobs: npo_beta\)"):
        resolve_method(MethodConfig(name="npo", rmu_layer=7), num_layers=2)


def test_a_knob_the_method_does_not_read_is_an_error():
    with pytest.raises(MethodError, match=r"method.rmu_steering: 'npo' does not read .*\(its knobs: npo_beta\)"):
        resolve_method(MethodConfig(name="npo", rmu_steering=3))
    with pytest.raises(MethodError, match=r"method.kl_tokens: 'paper' .*\(its knobs: mismatch_k\)"):
        resolve_method(MethodConfig(name="paper", kl_tokens=2))
    # an objective added by weight brings its knobs; the method's refusal targets bring `refusals`
    assert resolve_method(MethodConfig(name="paper", kl_tokens=2, weights={"kl_first_tokens": 1.0})).knobs.kl_tokens == 2
    assert resolve_method(MethodConfig(name="idk", refusals=["No."])).mismatch_answers == ["No."]
    with pytest.raises(MethodError, match="method.refusals: 'npo'"):
        resolve_method(MethodConfig(name="npo", refusals=["No."]))
    # a zero weight drops the objective, and its knob with it
    with pytest.raises(MethodError, match="method.mismatch_k: 'paper'"):
        resolve_method(MethodConfig(name="paper", mismatch_k=2, weights={"mismatch": 0.0}))


@pytest.mark.parametrize("lora,lr", [(True, 3e-2), (False, 1e-2)], ids=["lora", "full"])
def test_rmu_forget_loss_falls_while_training(lora, lr, tiny_llama, qa_files, tmp_path):
    raw = base_config(tiny_llama, qa_files, max_steps=8, lr=lr)
    raw["method"] = {"name": "rmu", "weights": {"rmu_retain": 1.0}}  # the paper's 1200 barely moves a toy model
    raw["output"] = {"save": "none"}
    if lora:
        raw["model"]["lora"] = {"r": 4, "alpha": 8}
    run(load_config(raw=raw), tmp_path / "out")
    forget = [row["loss_rmu_forget"] for row in read_jsonl(tmp_path / "out" / "train_log.jsonl")]
    assert len(forget) == 8 and forget[-1] < 0.6 * forget[0]


# --- every method, end to end --------------------------------------------------------------------

@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_runs_with_lora_and_full_fine_tune(name, lora, tiny_llama, qa_files, tmp_path):
    raw = base_config(tiny_llama, qa_files, max_steps=2)
    raw["method"] = {"name": name}
    raw["output"] = {"save": "adapter" if lora else "merged"}
    if lora:
        raw["model"]["lora"] = {"r": 2, "alpha": 4}
    result = run(load_config(raw=raw), tmp_path / "out")
    assert result.summary["steps"] == 2 and not result.summary["diverged"]
    assert result.summary["weights"] == METHODS[name].weights
    log = read_jsonl(tmp_path / "out" / "train_log.jsonl")
    for row in log:
        terms = {key.removeprefix("loss_") for key in row if key.startswith("loss_")}
        assert terms == set(METHODS[name].weights)
        assert all(torch.isfinite(torch.tensor(row[key])) for key in row if key.startswith("loss_") or key == "loss")
        assert row["loss"] == pytest.approx(sum(row[f"loss_{t}"] for t in terms), rel=1e-5, abs=1e-6)
    # mismatch rows (random answers or refusals) are in the batch only when an objective reads them
    assert ("mismatch_nll" in log[0]) == ("mismatch" in resolve_method(MethodConfig(name=name)).groups)
    saved = tmp_path / "out" / ("adapter" if lora else "model")
    assert (saved / ("adapter_config.json" if lora else "config.json")).exists()


# --- refusal guard -------------------------------------------------------------------------------

def test_refusal_guard_rows_and_loss_in_a_run(tiny_llama, qa_files, tmp_path):
    _, tokenizer, method, data = method_data(tiny_llama, qa_files, name="idk", weights={"refusal_guard": 2.0})
    assert set(method.weights) == {"forget_ga", "mismatch", "kl_to_original", "refusal_guard"}
    guarded = build_data(load_config(raw=base_config(tiny_llama, qa_files)).data, tokenizer, seed=1, batch_size=2,
                         normal_batch_size=2, mismatch_k=1, mismatch_answers=method.mismatch_answers,
                         guard_answers=method.mismatch_answers)
    batch = guarded.step_batch(0)
    normal, guard = split_rows(batch, "normal"), split_rows(batch, "guard")
    assert [prompt for prompt, _ in guard] == [prompt for prompt, _ in normal]  # normal prompts ...
    assert set(answers(tokenizer, guard)) <= set(DEFAULT_REFUSALS)  # ... followed by refusals
    raw = base_config(tiny_llama, qa_files, max_steps=3, lr=3e-2)
    raw["method"] = {"name": "idk", "weights": {"refusal_guard": 2.0}}
    raw["model"]["lora"] = {"r": 2, "alpha": 4}
    raw["output"] = {"save": "none"}
    run(load_config(raw=raw), tmp_path / "out")
    log = read_jsonl(tmp_path / "out" / "train_log.jsonl")
    assert all("guard_nll" in row and row["loss_refusal_guard"] >= 0.0 for row in log)
    assert log[0]["loss_refusal_guard"] == pytest.approx(0.0, abs=1e-4)  # step 1: the original model itself
