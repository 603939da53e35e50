"""Objectives: pure functions of (step outputs, method knobs) -> scalar loss, registered by name.

Output objectives read answer-token quantities only (prompt and padding never carry loss); token
means are over all answer tokens of a group in the step (the usual causal-LM loss convention). The
hidden-state objectives read a layer's outputs: RMU and the retain terms at every non-padding token
of a row, rerouting at the forget rows' answer tokens.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from unlearn.config import MethodConfig
from unlearn.objectives.forward import Needs, StepOutputs


@dataclass(frozen=True)
class Objective:
    name: str
    fn: Callable[[StepOutputs, MethodConfig], torch.Tensor]
    groups: tuple[str, ...]  # row groups it reads; the step omits groups nobody reads
    needs: Callable[[MethodConfig], Needs]
    knobs: tuple[str, ...]  # the `method:` knobs it reads (setting any other is an error)
    doc: str


OBJECTIVES: dict[str, Objective] = {}


def objective(name: str, groups: tuple[str, ...], needs: Callable[[MethodConfig], Needs] = lambda m: Needs(),
              knobs: tuple[str, ...] = ()):
    def register(fn):
        OBJECTIVES[name] = Objective(name, fn, groups, needs, knobs, (fn.__doc__ or "").strip())
        return fn
    return register


def mean_nll(out: StepOutputs, group: str) -> torch.Tensor:
    logps = out.current.token_logps(group)
    return -logps.mean() if logps.numel() else logps.new_zeros(())


@objective("forget_ga", ("forget",))
def forget_ga(out: StepOutputs, method: MethodConfig) -> torch.Tensor:
    """Gradient ascent: minimise the negated NLL of the unwanted answer tokens."""
    return -mean_nll(out, "forget")


@objective("mismatch", ("mismatch",), knobs=("mismatch_k",))  # answers per forget row (data side)
def mismatch(out: StepOutputs, method: MethodConfig) -> torch.Tensor:
    """NLL of random (or template) answers given the forget prompts: pulls forget prompts
    towards harmless outputs."""
    return mean_nll(out, "mismatch")


@objective("retain_nll", ("normal",))
def retain_nll(out: StepOutputs, method: MethodConfig) -> torch.Tensor:
    """Plain NLL on normal answers (keeps what must survive likely)."""
    return mean_nll(out, "normal")


@objective("kl_to_original", ("normal",), lambda m: Needs(full_logprobs={"normal"}, reference_full={"normal"}))
def kl_to_original(out: StepOutputs, method: MethodConfig) -> torch.Tensor:
    """KL(p_original || p_current) over the full vocabulary at each normal answer token, averaged
    over those tokens (the paper code's "KL" was a cross-entropy over every position)."""
    current = out.current.full_logprobs["normal"]
    original = out.reference.full_logprobs["normal"]
    if not current.numel():
        return current.new_zeros(())
    return token_kl(original, current).mean()


def token_kl(original: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """KL(p_original || p_current) per position from log-probabilities over the vocabulary (last
    dimension). A KL is never negative, but summing 49k rounded terms of an equal pair can give
    -1e-8; each position is clamped at 0 after the sum, which changes no value that is not rounding."""
    return (original.exp() * (original - current)).sum(-1).clamp(min=0)


def token_index_in_row(position_row: torch.Tensor) -> torch.Tensor:
    """0, 1, 2, ... along each row's answer positions (positions are row-major)."""
    where = torch.arange(len(position_row), device=position_row.device)
    starts = torch.ones_like(position_row, dtype=torch.bool)
    starts[1:] = position_row[1:] != position_row[:-1]
    return where - torch.where(starts, where, torch.zeros_like(where)).cummax(0).values


@objective("kl_first_tokens", ("normal",), lambda m: Needs(full_logprobs={"normal"}, reference_full={"normal"}),
           knobs=("kl_tokens",))
def kl_first_tokens(out: StepOutputs, method: MethodConfig) -> torch.Tensor:
    """KL(p_original || p_current) at the first `kl_tokens` answer tokens of each normal row only,
    averaged over those. Whether a model answers, refuses or abstains is decided there; the
    whole-answer KL averages that decision with every later token of the answer."""
    current = out.current.full_logprobs["normal"]
    original = out.reference.full_logprobs["normal"]
    if not current.numel():
        return current.new_zeros(())
    rows = out.current.position_row[out.current.group_positions("normal")]
    first = token_index_in_row(rows) < method.kl_tokens
    return token_kl(original, current)[first].mean()


@objective("refusal_guard", ("guard",), lambda m: Needs(reference_logps={"guard"}))
def refusal_guard(out: StepOutputs, method: MethodConfig) -> torch.Tensor:
    """Refusals may not become likelier on normal prompts: mean over guard rows (a normal prompt
    followed by one of the method's refusals) of max(0, log p(refusal | prompt) - log p_original(
    refusal | prompt)) / |refusal|. Zero (no gradient) while no refusal gained ground on a normal
    prompt; the refusal targets' gain on forget prompts must come from what separates them."""
    gain = out.current.sequence_logps("guard") - out.reference.sequence_logps("guard")
    if not gain.numel():
        return gain.new_zeros(())
    return (F.relu(gain) / out.current.sequence_lengths("guard")).mean()


@objective("stop_guard", ("normal",), lambda m: Needs(full_logprobs={"normal"}, reference_full={"normal"}))
def stop_guard(out: StepOutputs, method: MethodConfig) -> torch.Tensor:
    """Answers may not end earlier on normal rows: mean over the normal rows' answer positions of
    max(0, log p(end) - log p_original(end)), `end` the template's end of answer (the token most of
    the step's normal rows end with: a row cut at max_length ends on another).

    Refusal targets are one sentence and an end: learning them teaches the model to stop every
    answer after its first sentence (the original continues a refusal: p(end) about 0.005 after it).
    The KL to the original charges a token that gains mass only through the renormalisation of the
    others (log 2 for an end reaching p = 0.5 at one position, averaged with every other answer token)."""
    current = out.current.full_logprobs["normal"]
    original = out.reference.full_logprobs["normal"]
    if not current.numel():
        return current.new_zeros(())
    where = out.current.group_positions("normal")
    rows, targets = out.current.position_row[where], out.current.targets[where]
    last = torch.ones_like(rows, dtype=torch.bool)
    last[:-1] = rows[1:] != rows[:-1]  # positions are row-major: each row's last answer token
    end = int(targets[last].mode().values)
    return F.relu(current[:, end] - original[:, end]).mean()


@objective("npo", ("forget",), lambda m: Needs(reference_logps={"forget"}), knobs=("npo_beta",))
def npo(out: StepOutputs, method: MethodConfig) -> torch.Tensor:
    """Negative preference optimisation (Zhang et al. 2024): -(2/beta) * mean log sigmoid(
    -beta * (log p(y|x) - log p_original(y|x))) over forget answers; bounded, unlike plain GA."""
    beta = method.npo_beta
    ratio = out.current.sequence_logps("forget") - out.reference.sequence_logps("forget")
    return -(2.0 / beta) * F.logsigmoid(-beta * ratio).mean()


@objective("simnpo", ("forget",), knobs=("npo_beta", "simnpo_gamma"))
def simnpo(out: StepOutputs, method: MethodConfig) -> torch.Tensor:
    """SimNPO (Fan et al. 2024): NPO without a reference model, on the length-normalised
    log-likelihood with a margin gamma: -(2/beta) * mean log sigmoid(-beta/|y| log p(y|x) - gamma)."""
    beta, gamma = method.npo_beta, method.simnpo_gamma
    normalised = out.current.sequence_logps("forget") / out.current.sequence_lengths("forget")
    return -(2.0 / beta) * F.logsigmoid(-beta * normalised - gamma).mean()


def _rmu_needs(method: MethodConfig) -> Needs:
    return Needs(hidden_layers=frozenset({method.rmu_layer} - {None}), reference_hidden={"normal"})


def _masked_mse(hidden: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (((hidden - target) ** 2) * weights).sum() / (weights.sum() * hidden.shape[-1]).clamp(min=1)


def rmu_direction(hidden_size: int, seed: int, steering: float) -> torch.Tensor:
    """The fixed random unit direction (scaled by `steering`) RMU pushes forget activations to."""
    generator = torch.Generator().manual_seed(seed)
    direction = torch.rand(hidden_size, generator=generator)
    return steering * direction / direction.norm()


@objective("rmu_forget", ("forget",), _rmu_needs, knobs=("rmu_layer", "rmu_steering"))
def rmu_forget(out: StepOutputs, method: MethodConfig) -> torch.Tensor:
    """RMU (Li et al. 2024, WMDP): MSE between a layer's activations on forget rows and a fixed
    random direction scaled by `rmu_steering`, which scrambles what later layers read."""
    hidden, mask = out.current.group_hidden("forget", method.rmu_layer)
    target = rmu_direction(hidden.shape[-1], 0, method.rmu_steering).to(hidden)
    return _masked_mse(hidden, target, mask)


@objective("rmu_retain", ("normal",), _rmu_needs, knobs=("rmu_layer",))
def rmu_retain(out: StepOutputs, method: MethodConfig) -> torch.Tensor:
    """RMU's retain term: MSE between the layer's activations on normal rows and the original's."""
    hidden, mask = out.current.group_hidden("normal", method.rmu_layer)
    original, _ = out.reference.group_hidden("normal", method.rmu_layer)
    return _masked_mse(hidden, original.to(hidden), mask)


def _rr_needs(groups: set[str]) -> Callable[[MethodConfig], Needs]:
    return lambda m: Needs(hidden_layers=frozenset(m.rr_layers or ()), reference_hidden=set(groups))


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def rerouting(out: StepOutputs, method: MethodConfig) -> torch.Tensor:
    """Mean over the forget rows' answer tokens and the `rr_layers` of ReLU(cos(h, h_original)):
    zero once every answer token's hidden state points away from (or orthogonally to) the original's.

    rr_center: the cosines of h - m and h_original - m, m the original's mean state over the batch's
    forget answer tokens. Models with a few massive residual dimensions (SmolLM2: 3 of 576 hold over
    half the squared norm) give unrelated tokens a cosine of about 0.55; minus the mean it is about 0,
    so the term measures the direction that is specific to each token."""
    mask = out.current.group_answer_mask("forget")
    terms = []
    for layer in method.rr_layers:
        hidden, _ = out.current.group_hidden("forget", layer)
        original, _ = out.reference.group_hidden("forget", layer)
        hidden, original = hidden.float(), original.float()
        if method.rr_center:
            weights = mask.to(original.dtype).unsqueeze(-1)
            center = (original * weights).sum((0, 1)) / weights.sum().clamp(min=1)
            hidden, original = hidden - center, original - center
        terms.append(_masked_mean(F.relu(F.cosine_similarity(hidden, original, dim=-1)), mask))
    return torch.stack(terms).mean()


def hidden_distance(out: StepOutputs, method: MethodConfig) -> torch.Tensor:
    """Mean over the normal rows' tokens (prompt and answer) and the `rr_layers` of ||h - h_original||_2."""
    terms = []
    for layer in method.rr_layers:
        hidden, mask = out.current.group_hidden("normal", layer)
        original, _ = out.reference.group_hidden("normal", layer)
        terms.append(_masked_mean((hidden.float() - original.float()).norm(dim=-1), mask))
    return torch.stack(terms).mean()


@objective("rr_reroute", ("forget",), _rr_needs({"forget"}), knobs=("rr_layers", "rr_alpha", "rr_center"))
def rr_reroute(out: StepOutputs, method: MethodConfig) -> torch.Tensor:
    """Representation rerouting (circuit breakers, Zou et al. 2024): `rerouting` on the forget rows,
    weighted by the published schedule rr_alpha * (1 - t / 2T): all of it at the start, half at the end."""
    return method.rr_alpha * (1 - out.progress / 2) * rerouting(out, method)


@objective("rr_retain", ("normal",), _rr_needs({"normal"}), knobs=("rr_layers", "rr_alpha"))
def rr_retain(out: StepOutputs, method: MethodConfig) -> torch.Tensor:
    """The rerouting method's retain term: `hidden_distance` on normal rows, weighted by the published
    schedule rr_alpha * t / 2T (none at the start, rr_alpha / 2 at the end)."""
    return method.rr_alpha * (out.progress / 2) * hidden_distance(out, method)


@objective("retain_hidden", ("normal",), _rr_needs({"normal"}), knobs=("rr_layers",))
def retain_hidden(out: StepOutputs, method: MethodConfig) -> torch.Tensor:
    """Hold the normal rows' representations: `hidden_distance` at the `rr_layers`, at a constant
    weight; usable beside (or instead of) the output KL with any method."""
    return hidden_distance(out, method)


@objective("dpo", ("forget", "mismatch"), lambda m: Needs(reference_logps={"forget", "mismatch"}),
           knobs=("dpo_beta", "mismatch_k"))
def dpo(out: StepOutputs, method: MethodConfig) -> torch.Tensor:
    """DPO against refusals (open-unlearning's IdkDPO): chosen = a refusal (the forget prompt's
    mismatch rows, refusal targets), rejected = the unwanted answer, reference = the original:
    -mean log sigmoid(beta * ((log p(c) - log p_orig(c)) - (log p(r) - log p_orig(r)))), each forget
    row against the mean of its `mismatch_k` refusals."""
    rejected = out.current.sequence_logps("forget") - out.reference.sequence_logps("forget")
    chosen = out.current.sequence_logps("mismatch") - out.reference.sequence_logps("mismatch")
    if chosen.numel() != rejected.numel() * method.mismatch_k:
        raise ValueError(f"dpo: {chosen.numel()} refusal rows for {rejected.numel()} forget rows "
                         f"(mismatch_k {method.mismatch_k})")
    chosen = chosen.view(rejected.numel(), method.mismatch_k).mean(1)
    return -F.logsigmoid(method.dpo_beta * (chosen - rejected)).mean()
