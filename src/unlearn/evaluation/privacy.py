"""Membership-inference scores: higher means "looks like a training row".

AUC of forget rows (members) against held-out rows of the same kind: about 0.5 after good
unlearning (the forget rows look unseen), near 1 while the model still remembers them, and well
below 0.5 when unlearning overshoots (forget rows now look *less* likely than unseen ones, which
itself reveals them).
"""
from __future__ import annotations

import zlib
from typing import Callable

import numpy as np

from unlearn.evaluation.generation import TokenScores

MembershipScore = Callable[[TokenScores, str, float], float]  # (token scores, answer text, k) -> score
MIA_SCORES: dict[str, MembershipScore] = {}


def membership_score(name: str):
    def register(function: MembershipScore) -> MembershipScore:
        MIA_SCORES[name] = function
        return function
    return register


def _lowest_mean(values: np.ndarray, k: float) -> float:
    count = max(1, int(len(values) * k))
    return float(np.sort(values)[:count].mean())


@membership_score("loss")
def loss_score(scores: TokenScores, text: str, k: float) -> float:
    """Mean answer-token log-probability (Yeom et al.: members have lower loss)."""
    return float(scores.logprobs.mean())


@membership_score("zlib")
def zlib_score(scores: TokenScores, text: str, k: float) -> float:
    """Log-likelihood relative to the text's zlib size (Carlini et al. 2021): discounts text that is
    likely only because it is repetitive or simple."""
    return float(scores.logprobs.mean()) / len(zlib.compress(text.encode("utf-8")))


@membership_score("min_k")
def min_k_score(scores: TokenScores, text: str, k: float) -> float:
    """Mean of the k share of lowest token log-probabilities (Shi et al. 2024, Min-K%)."""
    return _lowest_mean(scores.logprobs, k)


@membership_score("min_k_pp")
def min_k_pp_score(scores: TokenScores, text: str, k: float) -> float:
    """Min-K%++ (Zhang et al. 2024): each token's log-probability standardised by the mean and
    standard deviation of log-probabilities over the vocabulary at its position."""
    return _lowest_mean((scores.logprobs - scores.mean) / scores.std, k)


def auc(member_scores: list[float], nonmember_scores: list[float]) -> float:
    """ROC AUC of telling members from non-members by score (ties count half)."""
    from sklearn.metrics import roc_auc_score

    labels = [1] * len(member_scores) + [0] * len(nonmember_scores)
    return float(roc_auc_score(labels, list(member_scores) + list(nonmember_scores)))
