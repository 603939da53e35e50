"""Objectives against hand-computed values, the method registry, and the exactness of the forward."""
from __future__ import annotations

import dataclasses

import math

import pytest
import torch
import torch.nn.functional as F

from unlearn.config import MethodConfig
from unlearn.data.batches import StepBatch
from unlearn.data.encoding import PAPER_TEMPLATE, PairEncoder, pad_rows
from unlearn.models.loading import load_model
from unlearn.objectives.forward import Pass, StepOutputs, _model_pass
from unlearn.objectives.methods import DEFAULT_REFUSALS, METHODS, MethodError
from unlearn.objectives.resolve import resolve_method
from unlearn.objectives.losses import OBJECTIVES, rmu_direction, token_kl

P = math.log  # readability: log of a probability


def hand_pass(full_logprobs=None, hidden=None, mask=None, answer_mask=None) -> Pass:
    """Rows: forget (2 tokens), forget (1), mismatch (1), normal (2). `hidden`: layer -> (rows, T, D)."""
    return Pass(logps=torch.tensor([-1.0, -3.0, -0.5, -2.0, -4.0, -0.25]),
                position_row=torch.tensor([0, 0, 1, 2, 3, 3]),
                row_group=["forget", "forget", "mismatch", "normal"],
                full_logprobs=full_logprobs or {}, hidden=hidden or {}, attention_mask=mask, answer_mask=answer_mask)


def loss(name: str, outputs: StepOutputs, **knobs) -> float:
    return float(OBJECTIVES[name].fn(outputs, MethodConfig(**knobs)))


def test_token_nll_objectives():
    out = StepOutputs(hand_pass(), None)
    assert loss("forget_ga", out) == pytest.approx(-(1.0 + 3.0 + 0.5) / 3)  # mean over forget tokens, negated
    assert loss("mismatch", out) == pytest.approx(2.0)
    assert loss("retain_nll", out) == pytest.approx((4.0 + 0.25) / 2)
    assert out.current.sequence_logps("forget").tolist() == [-4.0, -0.5]
    assert out.current.sequence_lengths("forget").tolist() == [2.0, 1.0]


def test_empty_group_gives_zero_loss():
    only_forget = Pass(torch.tensor([-1.0]), torch.tensor([0]), ["forget"], {})
    assert loss("mismatch", StepOutputs(only_forget, None)) == 0.0


def test_kl_of_known_distributions():
    original = torch.tensor([[0.5, 0.25, 0.25], [0.2, 0.3, 0.5]]).log()
    current = torch.tensor([[0.8, 0.1, 0.1], [0.2, 0.3, 0.5]]).log()
    out = StepOutputs(hand_pass({"normal": current}), hand_pass({"normal": original}))
    # token 1: KL(p||q) = 0.5 ln(0.5/0.8) + 2 * 0.25 ln(0.25/0.1) = 0.5 ln 1.5625; token 2: identical -> 0
    expected = (0.5 * P(0.5 / 0.8) + 0.5 * P(0.25 / 0.1) + 0.0) / 2
    assert expected == pytest.approx(0.5 * P(1.5625) / 2)
    assert loss("kl_to_original", out) == pytest.approx(expected, abs=1e-6)
    # the direction matters: KL(q||p) = 0.8 ln 1.6 + 0.2 ln 0.4 is another number
    swapped = StepOutputs(hand_pass({"normal": original}), hand_pass({"normal": current}))
    assert loss("kl_to_original", swapped) == pytest.approx((0.8 * P(1.6) + 0.2 * P(0.4)) / 2, abs=1e-6)
    same = StepOutputs(hand_pass({"normal": original}), hand_pass({"normal": original}))
    assert loss("kl_to_original", same) == pytest.approx(0.0, abs=1e-7)


def test_kl_of_one_distribution_rounded_two_ways_is_never_negative():
    # a 49152-token vocabulary (SmolLM2's); shifting the logits leaves the distribution as it is but
    # rounds each float32 log-probability another way, and the plain sum goes below 0 on some tokens
    torch.manual_seed(0)
    logits = torch.randn(64, 49152) * 3
    original, current = logits.log_softmax(-1), (logits + 0.5).log_softmax(-1)
    assert ((original.exp() * (original - current)).sum(-1) < 0).any()  # what the old code returned
    rows = torch.arange(64)
    one_token_rows = Pass(torch.zeros(64), rows, ["normal"] * 64, {"normal": current})
    reference = Pass(torch.zeros(64), rows, ["normal"] * 64, {"normal": original})
    out = StepOutputs(one_token_rows, reference)
    assert (token_kl(original, current) >= 0).all()
    assert 0 <= loss("kl_to_original", out) < 1e-6
    assert 0 <= loss("kl_first_tokens", out, kl_tokens=1) < 1e-6


def test_kl_at_the_first_answer_tokens_of_each_row():
    from unlearn.objectives.losses import token_index_in_row

    assert token_index_in_row(torch.tensor([0, 0, 0, 2, 2, 3, 5, 5])).tolist() == [0, 1, 2, 0, 1, 0, 0, 1]
    # two normal rows: 3 tokens and 1 token; per-token KLs a, 0, b (row 1) and c (row 2)
    p = torch.tensor([[0.5, 0.25, 0.25], [0.2, 0.3, 0.5], [0.6, 0.2, 0.2], [0.1, 0.1, 0.8]])
    q = torch.tensor([[0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.2, 0.4, 0.4], [0.3, 0.3, 0.4]])
    kl = [float((row_p * (row_p / row_q).log()).sum()) for row_p, row_q in zip(p, q)]
    a, b, c = kl[0], kl[2], kl[3]
    assert kl[1] == pytest.approx(0.0, abs=1e-7) and min(a, b, c) > 0

    def passes(full):
        return Pass(torch.zeros(6), torch.tensor([0, 1, 1, 1, 2, 3]), ["forget", "normal", "mismatch", "normal"],
                    {"normal": full})
    out = StepOutputs(passes(q.log()), passes(p.log()))
    assert loss("kl_first_tokens", out, kl_tokens=1) == pytest.approx((a + c) / 2, abs=1e-6)  # first token of each row
    assert loss("kl_first_tokens", out, kl_tokens=2) == pytest.approx((a + 0 + c) / 3, abs=1e-6)
    assert loss("kl_first_tokens", out, kl_tokens=4) == pytest.approx(loss("kl_to_original", out), abs=1e-7)
    assert loss("kl_to_original", out) == pytest.approx((a + b + c) / 4, abs=1e-6)


def test_npo_with_known_sequence_logps():
    current = hand_pass()  # forget sequence log-probs: -4, -0.5
    reference = Pass(torch.tensor([-2.0, -1.0, -0.5]), torch.tensor([0, 0, 1]), ["forget", "forget"], {})
    out = StepOutputs(current, reference)  # ratios: -4 - (-3) = -1 and 0
    beta = 0.1
    # -(2/beta) * mean(log sigmoid(-beta * ratio)), log sigmoid(x) = -log(1 + e^-x)
    expected = (2 / beta) * (math.log(1 + math.exp(-0.1)) + math.log(2)) / 2
    assert expected == pytest.approx(13.3754, abs=1e-4)
    assert loss("npo", out, npo_beta=beta) == pytest.approx(expected, rel=1e-6)
    # at the original model (ratio 0) NPO is (2/beta) log 2 whatever beta is
    assert loss("npo", StepOutputs(reference, reference), npo_beta=0.5) == pytest.approx(4 * math.log(2), rel=1e-6)


def test_refusal_guard_hinges_the_per_token_gain_over_the_original():
    # guard rows: a refusal of 2 tokens after one normal prompt, of 1 token after another
    current = Pass(torch.tensor([-1.0, -0.5, -3.0]), torch.tensor([0, 0, 1]), ["guard", "guard"], {})
    reference = Pass(torch.tensor([-2.0, -1.5, -2.0]), torch.tensor([0, 0, 1]), ["guard", "guard"], {})
    # row 0: log p rose from -3.5 to -1.5, +2 nats over 2 tokens -> 1.0; row 1: fell (-3 vs -2) -> 0
    assert loss("refusal_guard", StepOutputs(current, reference)) == pytest.approx((1.0 + 0.0) / 2)
    assert loss("refusal_guard", StepOutputs(reference, reference)) == 0.0  # at the original: no loss
    gain = current.logps.clone().requires_grad_()
    OBJECTIVES["refusal_guard"].fn(StepOutputs(Pass(gain, current.position_row, current.row_group, {}), reference),
                                   MethodConfig()).backward()
    assert gain.grad.tolist() == pytest.approx([0.25, 0.25, 0.0])  # no gradient where refusals did not gain
    no_rows = Pass(torch.tensor([-1.0]), torch.tensor([0]), ["normal"], {})
    assert loss("refusal_guard", StepOutputs(no_rows, no_rows)) == 0.0


def test_stop_guard_hinges_the_gain_of_the_end_token():
    # a forget row, then three normal rows: two of 2 tokens ending with the end token (2) and one of
    # 1 token cut at max_length (ends with 0); vocabulary of 3
    original = torch.tensor([[0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.5, 0.4, 0.1], [0.7, 0.2, 0.1], [0.2, 0.7, 0.1]])
    current = torch.tensor([[0.3, 0.3, 0.4], [0.1, 0.1, 0.8], [0.5, 0.45, 0.05], [0.4, 0.4, 0.2], [0.8, 0.1, 0.1]])

    def passes(full):
        return Pass(torch.zeros(6), torch.tensor([0, 1, 1, 2, 2, 3]), ["forget", "normal", "normal", "normal"],
                    {"normal": full.log()}, targets=torch.tensor([0, 1, 2, 0, 2, 0]))
    out = StepOutputs(passes(current), passes(original))
    # end = 2 at every normal position: log 0.4/0.1 = log 4, equal, fell, log 0.2/0.1 = log 2, equal
    assert loss("stop_guard", out) == pytest.approx((P(4) + P(2)) / 5, abs=1e-6)
    assert loss("stop_guard", StepOutputs(passes(original), passes(original))) == 0.0
    leaf = current.log().requires_grad_()
    OBJECTIVES["stop_guard"].fn(StepOutputs(dataclasses.replace(passes(current), full_logprobs={"normal": leaf}),
                                            passes(original)), MethodConfig()).backward()
    expected = torch.zeros(5, 3)
    expected[0, 2] = expected[3, 2] = 1 / 5  # gradient only at the end token, where it gained
    assert torch.equal(leaf.grad, expected)


def test_refusal_guard_needs_refusal_targets():
    with pytest.raises(MethodError, match="refusal_guard.*no refusal targets"):
        resolve_method(MethodConfig(name="paper", weights={"refusal_guard": 1.0}))
    resolved = resolve_method(MethodConfig(name="idk", weights={"refusal_guard": 1.0}))
    assert "guard" in resolved.groups and resolved.needs.reference_logps >= {"guard"}


def test_simnpo_length_normalised_with_margin():
    out = StepOutputs(hand_pass(), None)  # forget: (-1 - 3) / 2 = -2 per token, -0.5 / 1
    # beta 1, gamma 0.5: arguments -1 * -2 - 0.5 = 1.5 and 0.5 - 0.5 = 0
    expected = 2.0 * (math.log(1 + math.exp(-1.5)) + math.log(2)) / 2
    assert loss("simnpo", out, npo_beta=1.0, simnpo_gamma=0.5) == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.894560, abs=1e-6)


def test_rmu_direction_is_a_fixed_scaled_unit_vector():
    direction = rmu_direction(8, seed=0, steering=6.5)
    assert float(direction.norm()) == pytest.approx(6.5, rel=1e-6)
    assert (direction >= 0).all() and torch.equal(direction, rmu_direction(8, 0, 6.5))
    assert not torch.equal(direction, rmu_direction(8, 1, 6.5))


def test_rmu_forget_and_retain_masked_mse():
    target = rmu_direction(2, seed=0, steering=3.0)
    delta = torch.tensor([[[1.0, 1.0], [2.0, 0.0], [100.0, 100.0]],  # forget row: last position is padding
                          [[0.0, 3.0], [0.0, 0.0], [0.0, 0.0]],  # forget row, one real token
                          [[9.0, 9.0], [9.0, 9.0], [9.0, 9.0]],  # mismatch row: not read
                          [[1.0, 0.0], [0.0, 2.0], [7.0, 7.0]]])  # normal row, padding at the end
    mask = torch.tensor([[1, 1, 0], [0, 1, 0], [1, 1, 1], [1, 1, 0]])
    hidden = target + delta
    current = hand_pass(hidden={0: hidden}, mask=mask)
    # forget: masked positions (1,1), (2,0), (0,0): squared errors 2 + 4 + 0 over 3 positions x 2 dims
    assert loss("rmu_forget", StepOutputs(current, None), rmu_steering=3.0, rmu_layer=0) == pytest.approx(6 / 6, rel=1e-6)
    reference = Pass(torch.zeros(1), torch.tensor([0]), ["normal"], {}, hidden={0: hidden[3:] - delta[3:]},
                     attention_mask=mask[3:])
    # retain: normal row vs the original's activations: (1 + 4) / (2 positions x 2 dims)
    assert loss("rmu_retain", StepOutputs(current, reference), rmu_layer=0) == pytest.approx(5 / 4, rel=1e-6)


# --- method registry -----------------------------------------------------------------------------

def test_unknown_method_lists_the_known_ones():
    with pytest.raises(MethodError) as error:
        resolve_method(MethodConfig(name="nope"))
    assert "method.name" in str(error.value) and "'nope'" in str(error.value)
    assert all(name in str(error.value) for name in METHODS)


def test_unknown_objective_lists_the_known_ones():
    with pytest.raises(MethodError) as error:
        resolve_method(MethodConfig(name="paper", weights={"forget_gaa": 1.0}))
    assert "method.weights" in str(error.value) and "'forget_gaa'" in str(error.value)
    assert all(name in str(error.value) for name in OBJECTIVES)


def test_weight_overrides_replace_key_by_key():
    paper = resolve_method(MethodConfig(name="paper"))
    assert paper.weights == {"forget_ga": 0.5, "mismatch": 1.0, "kl_to_original": 1.0}
    assert paper.groups == {"forget", "mismatch", "normal"}
    assert paper.needs.full_logprobs == {"normal"} and paper.needs.reference_full == {"normal"}
    changed = resolve_method(MethodConfig(name="paper", weights={"forget_ga": 2.0, "mismatch": 0, "retain_nll": 3}))
    assert changed.weights == {"forget_ga": 2.0, "kl_to_original": 1.0, "retain_nll": 3.0}  # zero drops a term
    assert "mismatch" not in changed.groups
    with pytest.raises(MethodError, match="every weight is zero"):
        resolve_method(MethodConfig(name="ga", weights={"forget_ga": 0}))


def test_method_knob_defaults_yield_to_explicit_values():
    assert resolve_method(MethodConfig(name="simnpo")).knobs.npo_beta == 2.5  # SimNPO paper default
    assert resolve_method(MethodConfig(name="simnpo", npo_beta=0.1)).knobs.npo_beta == 0.1
    idk = resolve_method(MethodConfig(name="idk"))
    assert idk.mismatch_answers == DEFAULT_REFUSALS and idk.knobs.mismatch_k == 1
    assert resolve_method(MethodConfig(name="idk", refusals=["No."])).mismatch_answers == ["No."]
    assert resolve_method(MethodConfig(name="paper")).mismatch_answers is None
    assert resolve_method(MethodConfig(name="rmu"), num_layers=12).knobs.rmu_layer == 4
    assert resolve_method(MethodConfig(name="npo")).needs.reference_logps == {"forget"}


# --- the forward ---------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt"])
def test_model_pass_equals_full_log_softmax(arch, request):
    """The LM head applied to the last hidden state at answer positions only is the full forward."""
    model, tokenizer = load_model(str(request.getfixturevalue(f"tiny_{arch}")))
    model.eval()
    encoder = PairEncoder(tokenizer, "auto" if arch == "llama" else PAPER_TEMPLATE, 64)
    rows = [encoder.encode("How do I pick a lock?", "Here is how."),
            encoder.encode("How do I pick a lock?", "Madrid is the capital of Spain."),  # a mismatch row
            encoder.encode("Hi", "Paris."), encoder.encode("Who wrote the play Hamlet?", "Shakespeare wrote Hamlet.")]
    padded = pad_rows(rows, tokenizer.pad_token_id)
    batch = StepBatch(padded["input_ids"], padded["attention_mask"], padded["labels"],
                      ["forget", "mismatch", "normal", "normal"])
    with torch.no_grad():
        got = _model_pass(model, batch, {"normal"}, hidden_layers=frozenset({0}))
        full = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True)
    logprobs = torch.log_softmax(full.logits.float(), dim=-1)[:, :-1]
    targets = batch.labels[:, 1:]
    answer = targets != -100
    expected = logprobs[answer].gather(-1, targets[answer].unsqueeze(-1)).squeeze(-1)
    assert got.logps.shape == expected.shape == (sum(len(r.answer_ids) for r in rows),)
    torch.testing.assert_close(got.logps, expected, atol=1e-5, rtol=1e-5)
    assert got.position_row.tolist() == [i for i, r in enumerate(rows) for _ in r.answer_ids]
    normal_positions = answer.nonzero()[:, 0] > 1
    torch.testing.assert_close(got.full_logprobs["normal"], logprobs[answer][normal_positions], atol=1e-5, rtol=1e-5)
    assert set(got.full_logprobs) == {"normal"}
    torch.testing.assert_close(got.hidden[0], full.hidden_states[1])
    # the first answer token is predicted from the last prompt position
    first = len(rows[0].prompt_ids)
    assert float(got.logps[0]) == pytest.approx(float(logprobs[0, first - 1, rows[0].answer_ids[0]]), abs=1e-5)


# --- representation rerouting, hidden-state retain, DPO against refusals --------------------------

def rr_passes():
    """Hand-set hidden states at two layers (rows: forget, forget, mismatch, normal; 2 tokens, 2 dims)."""
    current = {0: torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [3.0, 4.0]], [[5.0, 5.0], [5.0, 5.0]],
                                [[3.0, 4.0], [9.0, 9.0]]]),
               1: torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[7.0, 7.0], [1.0, 0.0]], [[5.0, 5.0], [5.0, 5.0]],
                                [[1.0, 1.0], [9.0, 9.0]]])}
    original = {0: torch.tensor([[[1.0, 0.0], [0.0, -1.0]], [[-1.0, 1.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]],
                                 [[0.0, 0.0], [0.0, 0.0]]]),
                1: torch.tensor([[[1.0, 1.0], [-1.0, 0.0]], [[7.0, 7.0], [0.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]],
                                 [[1.0, 1.0], [0.0, 0.0]]])}
    mask = torch.tensor([[1, 1], [1, 1], [1, 1], [1, 0]])  # the normal row's second token is padding
    answers = torch.tensor([[True, True], [False, True], [False, True], [False, True]])
    return (hand_pass(hidden=current, mask=mask, answer_mask=answers),
            hand_pass(hidden=original, mask=mask, answer_mask=answers))


def test_rerouting_and_hidden_retain_by_hand():
    current, original = rr_passes()
    # layer 0, forget answer tokens: cos 1, cos -1 -> 0, (row 1's first token is prompt), cos 1: 2/3
    # layer 1: cos([1,0],[1,1]) = 1/sqrt(2), cos([1,0],[-1,0]) -> 0, cos([1,0],[0,1]) = 0: 0.7071/3
    rerouting = (2 / 3 + (1 / math.sqrt(2)) / 3) / 2
    # normal row, its one real token: ||[3,4] - 0|| = 5 at layer 0, 0 at layer 1
    distance = (5.0 + 0.0) / 2
    start, middle = StepOutputs(current, original, 0.0), StepOutputs(current, original, 0.5)
    knobs = {"rr_layers": [0, 1], "rr_alpha": 5.0}
    assert loss("rr_reroute", start, **knobs) == pytest.approx(5.0 * rerouting, rel=1e-6)
    assert loss("rr_reroute", middle, **knobs) == pytest.approx(5.0 * 0.75 * rerouting, rel=1e-6)  # a(1 - t/2T)
    assert loss("rr_retain", start, **knobs) == 0.0  # a t/2T: nothing held at the start
    assert loss("rr_retain", middle, **knobs) == pytest.approx(5.0 * 0.25 * distance, rel=1e-6)
    assert loss("retain_hidden", start, rr_layers=[0, 1]) == pytest.approx(distance, rel=1e-6)
    assert loss("retain_hidden", start, rr_layers=[1]) == pytest.approx(0.0, abs=1e-7)  # the layer knob selects
    # an unchanged model: cos 1 everywhere (the rerouting term at its maximum), no distance
    same = StepOutputs(original, original, 0.0)
    assert loss("rr_reroute", same, rr_layers=[0], rr_alpha=1.0) == pytest.approx(1.0, rel=1e-6)
    assert loss("retain_hidden", same, rr_layers=[0, 1]) == 0.0


def test_centred_rerouting_by_hand():
    """rr_center: cosines after subtracting the original's mean over the forget answer tokens. Layer 0:
    original answer states [1,0], [0,-1], [3,4] -> mean m = [4/3, 1]; current [1,0], [0,1], [3,4].
    Minus m: tokens 1 and 3 are unchanged (cos 1); token 2: current [-4/3, 0] against original
    [-4/3, -2]: cos = (16/9) / (4/3 * sqrt(52)/3) = 4/sqrt(52)."""
    current, original = rr_passes()
    start = StepOutputs(current, original, 0.0)
    expected = (1 + 4 / math.sqrt(52) + 1) / 3
    assert loss("rr_reroute", start, rr_layers=[0], rr_alpha=1.0, rr_center=True) == pytest.approx(expected, rel=1e-6)
    # uncentred, the same tokens give 2/3 (token 2: cos([0,1], [0,-1]) = -1 -> 0)
    assert loss("rr_reroute", start, rr_layers=[0], rr_alpha=1.0) == pytest.approx(2 / 3, rel=1e-6)
    # a shared offset on every state (a massive dimension) leaves the centred term unchanged
    shifted = {layer: h + torch.tensor([100.0, 0.0]) for layer, h in current.hidden.items()}
    shifted_original = {layer: h + torch.tensor([100.0, 0.0]) for layer, h in original.hidden.items()}
    moved = StepOutputs(dataclasses.replace(current, hidden=shifted), dataclasses.replace(original, hidden=shifted_original))
    assert loss("rr_reroute", moved, rr_layers=[0], rr_alpha=1.0, rr_center=True) == pytest.approx(expected, rel=1e-5)
    assert loss("rr_reroute", moved, rr_layers=[0], rr_alpha=1.0) > 0.99  # uncentred: the offset dominates


def test_dpo_against_refusals_by_hand():
    rows = torch.tensor([0, 0, 1, 2, 3])
    groups = ["forget", "forget", "mismatch", "mismatch"]
    current = Pass(torch.tensor([-1.0, -3.0, -1.0, -2.0, -3.0]), rows, groups, {})  # rows: -4, -1, -2, -3
    reference = Pass(torch.tensor([-1.5, -1.5, -1.5, -2.5, -2.5]), rows, groups, {})  # rows: -3, -1.5, -2.5, -2.5
    # rejected (forget) log-ratios -1, 0.5; chosen (refusal) log-ratios 0.5, -0.5
    expected = -(F.logsigmoid(torch.tensor(0.1 * (0.5 + 1.0))) + F.logsigmoid(torch.tensor(0.1 * (-0.5 - 0.5)))) / 2
    out = StepOutputs(current, reference)
    assert loss("dpo", out, dpo_beta=0.1, mismatch_k=1) == pytest.approx(float(expected), rel=1e-6)
    # two refusals per forget row: the forget row (log-ratio -4 - -3 = -1) against their mean (0.5, 0.5)
    assert loss("dpo", StepOutputs(Pass(current.logps[:4], rows[:4], ["forget", "mismatch", "mismatch"], {}),
                                   Pass(reference.logps[:4], rows[:4], ["forget", "mismatch", "mismatch"], {})),
                dpo_beta=1.0, mismatch_k=2) == pytest.approx(float(-F.logsigmoid(torch.tensor(0.5 + 1.0))), rel=1e-6)
    with pytest.raises(ValueError, match="dpo: 2 refusal rows for 2 forget rows"):
        loss("dpo", out, dpo_beta=0.1, mismatch_k=2)
