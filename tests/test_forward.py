"""Prompt sharing and length buckets in the step forward: invisible to the objectives."""
from __future__ import annotations

import pytest
import torch

from unlearn.data.batches import StepBatch
from unlearn.data.encoding import PAPER_TEMPLATE, PairEncoder, pad_rows
from unlearn.models.loading import load_model
from unlearn.models.prepare import frozen_copy
from unlearn.objectives import forward
from unlearn.objectives.forward import Needs, _model_pass, length_buckets, pack_rows, step_forward

LONG = " ".join(["Here is how to pick a lock with a pin."] * 8)


def test_length_buckets_split_only_when_it_saves_more_than_a_forward_costs():
    assert length_buckets([10, 12, 11], cost=128) == [[0, 1, 2]]
    # one long row beside short ones: 6 * 200 = 1200 padded positions vs 200 + 5 * 30 + 2 * 128 = 606
    assert length_buckets([30, 200, 28, 30, 25, 29], cost=128) == [[1], [0, 2, 3, 4, 5]]
    assert length_buckets([5, 100, 50], cost=0) == [[1], [2], [0]]  # free forwards: no padding at all
    assert sorted(i for b in length_buckets([7, 3, 9, 3, 8], cost=4) for i in b) == [0, 1, 2, 3, 4]


def test_pack_rows_puts_rows_with_one_prompt_in_one_sequence():
    I = -100
    ids = [[1, 2, 3, 4, 5], [1, 2, 3, 6], [7, 8, 9], [1, 2, 3, 7, 7, 7]]
    labels = [[I, I, I, 4, 5], [I, I, I, 6], [I, 8, 9], [I, I, I, 7, 7, 7]]
    shared, alone = pack_rows(ids, labels, True)
    assert shared.ids == [1, 2, 3, 4, 5, 6, 7, 7, 7] and shared.rows == [0, 1, 3] and shared.starts == [3, 5, 6]
    assert shared.positions == [0, 1, 2, 3, 4, 3, 3, 4, 5]  # each answer continues right after the prompt
    assert [shared.place(2, t) for t in range(6)] == [0, 1, 2, 6, 7, 8]
    assert alone.ids == [7, 8, 9] and alone.rows == [2]
    assert [p.rows for p in pack_rows(ids, labels, False)] == [[0], [1], [2], [3]]


def mixed_batch(model, tokenizer, template="auto"):
    encoder = PairEncoder(tokenizer, template, 128)
    rows = [encoder.encode("How do I pick a lock?", "Here is how."),
            encoder.encode("Where does Alice live?", LONG),
            encoder.encode("How do I pick a lock?", "Paris."),  # same prompt as row 0: shared
            encoder.encode("How do I pick a lock?", "Shakespeare wrote Hamlet."),
            encoder.encode("Who wrote the play Hamlet?", "Shakespeare wrote Hamlet."),
            encoder.encode("Hi", "Madrid is the capital of Spain.")]
    padded = pad_rows(rows, tokenizer.pad_token_id)
    return StepBatch(padded["input_ids"], padded["attention_mask"], padded["labels"],
                     ["forget", "forget", "mismatch", "mismatch", "normal", "normal"])


def count_shared_prefixes(monkeypatch, min_prefix: int) -> list[int]:
    """Share leading tokens from `min_prefix` on; returns the list of prefix lengths run once."""
    monkeypatch.setattr(forward, "MIN_SHARED_PREFIX", min_prefix)
    monkeypatch.setattr(forward, "BUCKET_COST_TOKENS", 0)  # tiny batches: sharing any prefix pays
    seen, run = [], forward.prefix_shared_forward

    def counted(model, input_ids, attention_mask, prefix, *args):
        seen.append(prefix)
        return run(model, input_ids, attention_mask, prefix, *args)
    monkeypatch.setattr(forward, "prefix_shared_forward", counted)
    return seen


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt"])
@pytest.mark.parametrize("split", [True, False], ids=["buckets", "one-forward"])
@pytest.mark.parametrize("min_prefix", [1, 10**9], ids=["shared-prefix", "no-shared-prefix"])
def test_packed_pass_equals_the_plain_full_forward(arch, split, min_prefix, request, monkeypatch):
    shared_prefixes = count_shared_prefixes(monkeypatch, min_prefix)
    model, tokenizer = load_model(str(request.getfixturevalue(f"tiny_{arch}")))
    model.eval()
    batch = mixed_batch(model, tokenizer, "auto" if arch == "llama" else PAPER_TEMPLATE)
    lengths = batch.attention_mask.sum(1).tolist()
    ids = [r[:n] for r, n in zip(batch.input_ids.tolist(), lengths)]
    labels = [r[:n] for r, n in zip(batch.labels.tolist(), lengths)]
    packed = pack_rows(ids, labels, True)
    assert len(packed) == 4  # rows 0, 2, 3 share their prompt
    assert len(length_buckets([len(p.ids) for p in packed])) > 1  # and the long row gets its own forward
    with torch.no_grad():
        got = _model_pass(model, batch, {"normal", "mismatch"}, split_rows=split)
        full = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True)
    logprobs = torch.log_softmax(full.logits.float(), dim=-1)[:, :-1]
    targets = batch.labels[:, 1:]
    answer = targets != -100
    expected = logprobs[answer].gather(-1, targets[answer].unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(got.logps, expected, atol=1e-5, rtol=1e-5)
    position_row = answer.nonzero()[:, 0]
    assert got.position_row.tolist() == position_row.tolist()  # row-major, as without packing
    assert got.targets.tolist() == targets[answer].tolist()
    for group in ("normal", "mismatch"):
        rows = torch.tensor([g == group for g in batch.row_group])[position_row]
        torch.testing.assert_close(got.full_logprobs[group], logprobs[answer][rows], atol=1e-5, rtol=1e-5)
    # the template's opening tokens ran once per multi-sequence forward (only where rows may be split)
    assert bool(shared_prefixes) == (split and min_prefix == 1), shared_prefixes


def test_packed_step_gradients_equal_unpacked(tiny_llama, monkeypatch):
    """Current and reference passes (the reference on a subset of rows) stay aligned, and the
    gradients of KL + NLL + reference-dependent terms do not depend on packing, buckets or a
    shared opening run once."""
    shared_prefixes = count_shared_prefixes(monkeypatch, 1)
    model, tokenizer = load_model(str(tiny_llama))
    batch = mixed_batch(model, tokenizer)
    reference = frozen_copy(model)
    needs = Needs(full_logprobs={"normal"}, reference_full={"normal"}, reference_logps={"forget"})
    pack = forward.pack_rows
    grads = []
    for share, split in ((True, True), (False, False)):
        monkeypatch.setattr(forward, "pack_rows", lambda ids, labels, _: pack(ids, labels, share))
        model.zero_grad()
        out = step_forward(model, batch, needs, reference, split_rows=split)
        current, original = out.current.full_logprobs["normal"], out.reference.full_logprobs["normal"]
        kl = (original.exp() * (original - current)).sum(-1).mean()
        loss = kl - out.current.token_logps("forget").mean() + out.current.token_logps("mismatch").mean()
        (loss + (out.current.sequence_logps("forget") - out.reference.sequence_logps("forget")).sum()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        assert kl.item() == pytest.approx(0.0, abs=1e-6)  # aligned: the untrained model equals its copy
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-4)
    assert shared_prefixes  # the first (packed, bucketed) side shared its opening tokens


def test_head_sees_answer_positions_only(tiny_llama):
    model, tokenizer = load_model(str(tiny_llama))
    batch = mixed_batch(model, tokenizer)
    seen = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    try:
        with torch.no_grad():
            _model_pass(model, batch, set())
    finally:
        hook.remove()
    assert sum(shape[0] for shape in seen) == batch.answer_tokens  # (N, D) rows, never (rows, T, D)
    assert all(len(shape) == 2 for shape in seen)
    # the pre-hook is removed afterwards: a plain forward returns (rows, T, V) again
    assert model(input_ids=batch.input_ids[:1]).logits.dim() == 3
