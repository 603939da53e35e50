"""A `method:` section resolved against the registries: the weights a run optimises, the knobs its
objectives read (a knob none of them reads is an error), what the step's forward must compute."""
from __future__ import annotations

from dataclasses import dataclass

from unlearn.config import MethodConfig
from unlearn.objectives.forward import Needs
from unlearn.objectives.losses import OBJECTIVES
from unlearn.objectives.methods import DEFAULT_REFUSALS, METHODS, Method, MethodError


@dataclass(frozen=True)
class ResolvedMethod:
    method: Method
    weights: dict[str, float]  # objectives with weight > 0
    knobs: MethodConfig
    mismatch_answers: list[str] | None

    @property
    def needs(self) -> Needs:
        needs = Needs()
        for name in self.weights:
            needs = needs.merge(OBJECTIVES[name].needs(self.knobs))
        return needs

    @property
    def groups(self) -> set[str]:
        return {g for name in self.weights for g in OBJECTIVES[name].groups}


def knobs_read(method: Method, weights: dict[str, float]) -> set[str]:
    """The `method:` knobs a run reads: those of its weighted objectives, and `refusals` when the
    method's mismatch answers are refusals."""
    return {k for name in weights for k in OBJECTIVES[name].knobs} | ({"refusals"} if method.refusal_targets else set())


def resolve_method(config: MethodConfig, num_layers: int | None = None) -> ResolvedMethod:
    if config.name not in METHODS:
        raise MethodError(f"method.name: unknown method {config.name!r}; known: {', '.join(sorted(METHODS))}")
    method = METHODS[config.name]
    weights = dict(method.weights)
    for name, weight in (config.weights or {}).items():
        if name not in OBJECTIVES:
            raise MethodError(f"method.weights: unknown objective {name!r}; known: {', '.join(sorted(OBJECTIVES))}")
        weights[name] = float(weight)
    weights = {name: w for name, w in weights.items() if w > 0}
    if not weights:
        raise MethodError("method.weights: every weight is zero; nothing to optimise")
    explicit = config.model_fields_set
    unread = sorted(explicit - {"name", "weights"} - knobs_read(method, weights))
    if unread:
        read = ", ".join(sorted(knobs_read(method, weights))) or "none"
        raise MethodError(f"method.{unread[0]}: {config.name!r} does not read this knob with these weights "
                          f"(its knobs: {read})")
    knobs = config.model_copy(update={k: v for k, v in method.defaults.items() if k not in explicit})
    if knobs.rmu_layer is None and num_layers:
        knobs = knobs.model_copy(update={"rmu_layer": max(0, num_layers // 3)})
    if knobs.rr_layers is None and num_layers:  # the published 10 and 20 of 32: a third and two thirds up
        knobs = knobs.model_copy(update={"rr_layers": sorted({num_layers // 3, 2 * num_layers // 3})})
    answers = (config.refusals or DEFAULT_REFUSALS) if method.refusal_targets else None
    if "refusal_guard" in weights and answers is None:
        raise MethodError(f"method.weights: refusal_guard guards the method's refusals on normal prompts; "
                          f"{config.name!r} has no refusal targets (use idk)")
    resolved = ResolvedMethod(method, weights, knobs, answers)
    # hidden_states[layer + 1] is read: a bad index must fail before training
    layer_knobs = {"rmu_layer": [knobs.rmu_layer], "rr_layers": knobs.rr_layers or []}
    for knob in sorted(set(layer_knobs) & knobs_read(method, weights)):
        for layer in layer_knobs[knob]:
            if layer is not None and (layer < 0 or (num_layers and layer >= num_layers)):
                raise MethodError(f"method.{knob}: {layer} is not a decoder layer of this model"
                                  + (f" (0..{num_layers - 1})" if num_layers else ""))
    return resolved
