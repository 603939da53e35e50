"""Methods: named, weighted combinations of registered objectives.

Adding a method is one entry here (and, if it needs a new loss, one function in registry.py).
`method.weights` in the config replaces a method's default weights key by key.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from unlearn.config import MethodConfig
from unlearn.errors import InputError
from unlearn.objectives.forward import Needs
from unlearn.objectives.registry import OBJECTIVES

DEFAULT_REFUSALS = [
    "I'm sorry, but I can't help with that.",
    "I can't share that information.",
    "Sorry, I don't know anything about that.",
    "I'm not able to answer that question.",
    "That's not something I can help with.",
    "I don't have any information on that.",
]


class MethodError(InputError):
    pass


@dataclass(frozen=True)
class Method:
    name: str
    weights: dict[str, float]
    doc: str
    refusal_targets: bool = False  # mismatch answers are short refusals, one per forget row
    defaults: dict = field(default_factory=dict)  # knob defaults from the method's paper


METHODS: dict[str, Method] = {m.name: m for m in [
    Method("paper", {"forget_ga": 0.5, "mismatch": 1.0, "kl_to_original": 1.0},
           "Yao et al. 2023: gradient ascent on unwanted answers, random mismatch answers from the "
           "normal pool, KL to the original model on normal data."),
    Method("ga", {"forget_ga": 1.0}, "Plain gradient ascent on the unwanted answers (a baseline)."),
    Method("ga_kl", {"forget_ga": 1.0, "kl_to_original": 1.0}, "Gradient ascent plus KL on normal data."),
    Method("graddiff", {"forget_ga": 1.0, "retain_nll": 1.0},
           "Gradient difference: ascent on forget answers, descent on normal answers."),
    Method("npo", {"npo": 1.0, "retain_nll": 1.0},
           "Negative preference optimisation with a retain NLL term (NPO+RT, Zhang et al. 2024)."),
    Method("simnpo", {"simnpo": 0.1375, "retain_nll": 1.0},
           "SimNPO (Fan et al. 2024): reference-free, length-normalised NPO, plus retain NLL "
           "(weights and beta: the paper's TOFU forget05 setting).",
           defaults={"npo_beta": 2.5}),
    Method("idk", {"forget_ga": 0.5, "mismatch": 1.0, "kl_to_original": 1.0},
           "The paper's templated variant (section 9.2): mismatch answers replaced by short refusals, "
           "so forget prompts get readable refusals instead of random text.",
           refusal_targets=True, defaults={"mismatch_k": 1}),
    Method("rmu", {"rmu_forget": 1.0, "rmu_retain": 1200.0},
           "RMU (Li et al. 2024): steer one layer's activations on forget rows to a random direction, "
           "keep them equal to the original's on normal rows (alpha 1200 with steering 6.5: the "
           "paper's Zephyr-7B setting)."),
]}


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
    knobs = config.model_copy(update={k: v for k, v in method.defaults.items() if k not in explicit})
    if knobs.rmu_layer is None and num_layers:
        knobs = knobs.model_copy(update={"rmu_layer": max(0, num_layers // 3)})
    answers = (config.refusals or DEFAULT_REFUSALS) if method.refusal_targets else None
    if "refusal_guard" in weights and answers is None:
        raise MethodError(f"method.weights: refusal_guard guards the method's refusals on normal prompts; "
                          f"{config.name!r} has no refusal targets (use idk)")
    resolved = ResolvedMethod(method, weights, knobs, answers)
    layer = resolved.needs.hidden_layer  # hidden_states[layer + 1] is read: a bad index must fail before training
    if layer is not None and (layer < 0 or (num_layers and layer >= num_layers)):
        raise MethodError(f"method.rmu_layer: {layer} is not a decoder layer of this model"
                          + (f" (0..{num_layers - 1})" if num_layers else ""))
    return resolved
