"""The formulas of the field's two standard benchmarks, as small functions of per-question numbers.

TOFU (Maini et al. 2024; as open-unlearning computes it), from mean token NLLs of answers given
their question:
- normalised probability P(a|q) = exp(-mean token NLL of a);
- truth ratio R = exp(mean_j NLL(perturbed_j) - NLL(paraphrased)): how much likelier the model finds
  the (paraphrased) true answer than wrong ones, per token. On the forget set the score is
  min(R, 1/R) (1 when the model cannot tell them apart), elsewhere max(0, 1 - 1/R);
- forget quality: the p-value of the two-sample Kolmogorov-Smirnov test between the forget set's
  per-question R of the evaluated model and of the retain model (1.0: indistinguishable);
- model utility: the harmonic mean of {probability, ROUGE-L recall, truth ratio} on the kept sets.

MUSE (Shi et al. 2024): ROUGE-L F1 of continuations and answers (evaluation.metrics.rouge_l), and
privleak = (AUC - AUC_reference) / AUC_reference x 100 of the Min-K% attack, forget vs holdout
texts, with AUC in MUSE's orientation (see privleak).
"""
from __future__ import annotations

import functools
import math

import numpy as np


def normalised_prob(nll: float) -> float:
    """P(a|q)^(1/|a|): the answer's probability per token."""
    return math.exp(-nll)


def relative_prob(nll_answer: float, nll_perturbed: list[float]) -> float:
    """P(a) / (P(a) + sum_j P(perturbed_j)), each token-normalised (TOFU's probability on the
    real-authors and world-facts sets, where the model is asked to prefer the true answer)."""
    answer = normalised_prob(nll_answer)
    return answer / (answer + sum(normalised_prob(n) for n in nll_perturbed))


def truth_ratio(nll_true: float, nll_perturbed: list[float]) -> float:
    """R = exp(mean_j NLL(perturbed_j) - NLL(true)) (> 1: the true answer is likelier)."""
    return math.exp(float(np.mean(nll_perturbed)) - nll_true)


def truth_ratio_score(ratios: list[float], forget: bool) -> float:
    """The set's truth-ratio metric: mean min(R, 1/R) on the forget set, mean max(0, 1 - 1/R) elsewhere."""
    r = np.asarray(ratios, dtype=float)
    return float(np.mean(np.minimum(r, 1 / r) if forget else np.maximum(0.0, 1 - 1 / r)))


def model_utility(values: list[float]) -> float:
    """Harmonic mean (0 when any value is 0: a model that lost one ability has no utility)."""
    values = [float(v) for v in values]
    if any(v <= 0 for v in values):
        return 0.0
    return len(values) / sum(1 / v for v in values)


def forget_quality(ratios: list[float], reference_ratios: list[float]) -> float:
    """p-value of the two-sample KS test between two sets of per-question truth ratios."""
    from scipy.stats import ks_2samp

    return float(ks_2samp(ratios, reference_ratios).pvalue)


@functools.lru_cache(maxsize=1)
def _stemmed_rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l_recall(output: str, gold: str) -> float:
    """ROUGE-L recall of the gold answer in the output, Porter-stemmed (TOFU's answer metric)."""
    return float(_stemmed_rouge().score(gold, output)["rougeL"].recall)


def privleak(auc: float, reference_auc: float) -> float:
    """MUSE's PrivLeak from membership AUCs (chance a forget text looks more like training data than
    a holdout text): MUSE's AUC is the other way round (1 - ours; its target models score near 0), so
    (AUC - AUC_ref) / AUC_ref x 100 on 1 - AUC. 0: like the retain model; < 0: the forget texts still
    look like training data (MUSE's targets: about -100); > 0: unlearning overshot."""
    muse, reference = 1 - auc, 1 - reference_auc
    return (muse - reference) / reference * 100
