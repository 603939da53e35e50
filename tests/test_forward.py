"""Length buckets in the step forward: the split is invisible to the objectives."""
from __future__ import annotations

import pytest
import torch

from unlearn.data.batches import StepBatch
from unlearn.data.encoding import PairEncoder, pad_rows
from unlearn.models.loading import load_model
from unlearn.objectives.forward import Needs, _model_pass, length_buckets, step_forward


def test_length_buckets_split_only_when_it_saves_more_than_a_forward_costs():
    assert length_buckets([10, 12, 11], cost=128) == [[0, 1, 2]]
    # one long row beside short ones: 6 * 200 = 1200 padded positions vs 200 + 5 * 30 + 2 * 128 = 606
    assert length_buckets([30, 200, 28, 30, 25, 29], cost=128) == [[1], [0, 2, 3, 4, 5]]
    assert length_buckets([5, 100, 50], cost=0) == [[1], [2], [0]]  # free forwards: no padding at all
    assert sorted(i for b in length_buckets([7, 3, 9, 3, 8], cost=4) for i in b) == [0, 1, 2, 3, 4]


@pytest.fixture()
def mixed_batch(tiny_llama):
    model, tokenizer = load_model(str(tiny_llama))
    encoder = PairEncoder(tokenizer, "auto", 128)
    long_answer = " ".join(["Here is how to pick a lock with a pin."] * 8)
    rows = [encoder.encode("How do I pick a lock?", "Here is how."),
            encoder.encode("Where does Alice live?", long_answer),
            encoder.encode("How do I pick a lock?", "Paris."),
            encoder.encode("Who wrote the play Hamlet?", "Shakespeare wrote Hamlet."),
            encoder.encode("Hi", "Madrid is the capital of Spain.")]
    padded = pad_rows(rows, tokenizer.pad_token_id)
    batch = StepBatch(padded["input_ids"], padded["attention_mask"], padded["labels"],
                      ["forget", "forget", "mismatch", "normal", "normal"])
    return model, batch


def test_bucketed_pass_equals_one_padded_forward(mixed_batch, monkeypatch):
    model, batch = mixed_batch
    model.eval()
    assert len(length_buckets(batch.attention_mask.sum(1).tolist())) > 1  # the split really happens
    with torch.no_grad():
        split = _model_pass(model, batch, {"normal", "forget"}, hidden_layer=0)
        whole = _model_pass(model, batch, {"normal", "forget"}, hidden_layer=0, split_rows=False)
    torch.testing.assert_close(split.logps, whole.logps, atol=1e-5, rtol=1e-5)
    assert split.position_row.tolist() == whole.position_row.tolist()  # row-major, as without buckets
    for group in ("normal", "forget"):
        torch.testing.assert_close(split.full_logprobs[group], whole.full_logprobs[group], atol=1e-5, rtol=1e-5)
    mask = batch.attention_mask.bool()
    torch.testing.assert_close(split.hidden[mask], whole.hidden[mask], atol=1e-5, rtol=1e-5)
    assert split.hidden.shape == whole.hidden.shape == (*batch.input_ids.shape, model.config.hidden_size)


def test_bucketed_step_gradients_equal_one_forward(mixed_batch):
    """Current and reference passes (reference on a subset of rows) stay aligned, and the
    gradients of a KL + NLL loss do not depend on the split."""
    from unlearn.models.prepare import frozen_copy

    model, batch = mixed_batch
    reference = frozen_copy(model)
    needs = Needs(full_logprobs={"normal"}, reference_full={"normal"}, reference_logps={"forget"})
    grads = []
    for split in (True, False):
        model.zero_grad()
        out = step_forward(model, batch, needs, reference, split_rows=split)
        current, original = out.current.full_logprobs["normal"], out.reference.full_logprobs["normal"]
        kl = (original.exp() * (original - current)).sum(-1).mean()
        (kl - out.current.token_logps("forget").mean() + out.reference.sequence_logps("forget").sum()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        assert kl.item() == pytest.approx(0.0, abs=1e-6)  # aligned: the untrained model equals its copy
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-4)


def test_head_sees_answer_positions_only(mixed_batch):
    model, batch = mixed_batch
    seen = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    try:
        with torch.no_grad():
            _model_pass(model, batch, set(), None)
    finally:
        hook.remove()
    assert sum(shape[0] for shape in seen) == batch.answer_tokens  # (N, D) rows, never (rows, T, D)
    assert all(len(shape) == 2 for shape in seen)
    # the pre-hook is removed afterwards: a plain forward returns (rows, T, V) again
    assert model(input_ids=batch.input_ids[:1]).logits.dim() == 3
