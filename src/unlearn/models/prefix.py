"""Run the opening tokens that every row of a batch shares once (a chat template's system prompt:
about 40% of a short chat row's positions), through the model's own key/value cache repeated over
the rows. Used by the training step, the fine-tune and generation; each checks against the plain
forward in the tests."""
from __future__ import annotations

import inspect

import torch

from unlearn.models.prepare import unwrap

# A prefix shorter than this is not worth its own forward (and the cache bookkeeping).
MIN_SHARED_PREFIX = 8


def shared_prefix(input_ids: torch.Tensor, attention_mask: torch.Tensor, first_read: int) -> int:
    """How many leading positions every row holds the same attended token, capped so that no
    position whose output is read (>= first_read) is in it and at least one position is left."""
    same = (input_ids == input_ids[:1]).all(0) & attention_mask.bool().all(0)
    return min(int(same.long().cumprod(0).sum()), first_read, input_ids.shape[1] - 1)


def cache_keyword(model) -> str:
    """The keyword a model's forward (and generate) takes a key/value cache by: transformers 5
    names it `cache` (`past_key_values` deprecated); 4.x knows only the old name."""
    model = unwrap(model)
    model = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT passes it through
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def can_share(model) -> bool:
    """Whether a prefix can be handed over as a key/value cache: not under activation checkpointing
    (it drops the cache in training), not for stateful models (Mamba-like: no key/value cache)."""
    model = unwrap(model)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return not getattr(base, "_is_stateful", False) and not any(
        getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


def prefix_cache(outputs) -> object:
    """The key/value cache a forward with use_cache=True returned."""
    return getattr(outputs, "cache", None) or outputs.past_key_values
