"""Methods: named, weighted combinations of the objectives in losses.py.

Adding a method is one entry here (and, if it needs a new loss, one function in losses.py).
`method.weights` in the config replaces a method's default weights key by key; resolve.py turns a
`method:` section into the weights and knobs a run uses. This table imports nothing heavy, so the
config can check method names when it loads.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from unlearn.errors import InputError

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
    Method("rr", {"rr_reroute": 1.0, "rr_retain": 1.0},
           "Representation rerouting (circuit breakers, Zou et al. 2024): push the hidden states of the "
           "unwanted answers away from the original's at rr_layers, hold those of normal rows, with the "
           "published schedule (rerouting first, retain growing)."),
    Method("dpo", {"dpo": 1.0, "retain_nll": 1.0},
           "DPO against refusals (open-unlearning's IdkDPO): a refusal preferred to the unwanted answer, "
           "the original as reference, plus retain NLL.",
           refusal_targets=True, defaults={"mismatch_k": 1}),
    Method("rmu", {"rmu_forget": 1.0, "rmu_retain": 1200.0},
           "RMU (Li et al. 2024): steer one layer's activations on forget rows to a random direction, "
           "keep them equal to the original's on normal rows (alpha 1200 with steering 6.5: the "
           "paper's Zephyr-7B setting)."),
]}
