"""Batched generation and teacher-forced answer scoring.

Generation left-pads each batch (so every row's next token sits at the last position), decodes with
the KV cache, and sorts prompts by length so a batch holds similar lengths. The opening tokens every
prompt shares (a chat template's system prompt) are run once per batch and handed to `generate` as
a cache repeated over the rows; each row's own tokens follow, padded in between (positions come
from the attention mask, so they are the unpadded ones). Scoring reuses the training encoding:
prompt ids + answer ids with answer-only labels, right-padded.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

from unlearn.data.encoding import IGNORE, Encoded, pad_rows
from unlearn.models.prefix import MIN_SHARED_PREFIX, cache_keyword, can_share
from unlearn.objectives.forward import opening_cache
from unlearn.ui import progress


@contextlib.contextmanager
def eval_mode(model):
    """Eval mode and no gradients inside; the previous train/eval mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield model
    finally:
        model.train(was_training)


def _batches(order: list[int], size: int):
    for start in range(0, len(order), size):
        yield order[start:start + size]


def answer_stop_ids(tokenizer, encoder) -> list[int]:
    """EOS, plus the token the template puts after an answer when it is one token (e.g. <|im_end|>)."""
    stops = [tokenizer.eos_token_id]
    end = tokenizer(encoder.end_of_answer, add_special_tokens=False)["input_ids"] if encoder.end_of_answer else []
    return stops + end if len(end) == 1 else stops


def common_prefix(prompts: list[list[int]]) -> int:
    """Leading tokens every prompt shares, leaving each prompt at least one token of its own."""
    shortest = min(len(p) for p in prompts)
    length = 0
    while length < shortest - 1 and all(p[length] == prompts[0][length] for p in prompts):
        length += 1
    return length


def generate(model, tokenizer, prompt_ids_list: list[list[int]], max_new_tokens: int, batch_size: int,
             do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
             stop_ids: list[int] | None = None, description: str = "generating",
             share_prefix: bool = True) -> list[str]:
    """Continuations of already-encoded prompts, decoded without special tokens, in input order.

    stop_ids: token ids that end an answer (default: the tokenizer's EOS). Sampling is seeded per
    batch and does not disturb the caller's RNG state. share_prefix: the prompts' common opening
    runs once per batch (see the module's doc).
    """
    from transformers import GenerationConfig

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stops = [i for i in (stop_ids or [tokenizer.eos_token_id]) if i is not None]
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=pad_id,
                              eos_token_id=stops or None, use_cache=True,
                              **({"temperature": temperature, "top_p": top_p} if do_sample else {}))
    device = next(model.parameters()).device
    order = sorted(range(len(prompt_ids_list)), key=lambda i: -len(prompt_ids_list[i]))
    outputs: list[str] = [""] * len(prompt_ids_list)
    # sampling reseeds per batch: fork the RNG of the device it draws on, so training's stream is untouched
    forked = [device] if device.type == "cuda" else []
    rng = torch.random.fork_rng(devices=forked) if do_sample else contextlib.nullcontext()
    share_prefix = share_prefix and can_share(model)
    with eval_mode(model), rng, progress() as bar:
        task = bar.add_task(description, total=len(order), status="")
        for number, batch in enumerate(_batches(order, batch_size)):
            prompts = [prompt_ids_list[i] for i in batch]
            prefix = common_prefix(prompts) if share_prefix and len(batch) > 1 else 0
            prefix = prefix if prefix >= MIN_SHARED_PREFIX else 0
            width = max(len(ids) for ids in prompts)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            for row, ids in enumerate(prompts):  # [shared prefix][padding][the row's own tokens]
                input_ids[row, :prefix], attention[row, :prefix] = torch.tensor(ids[:prefix]), 1
                input_ids[row, width - len(ids) + prefix:] = torch.tensor(ids[prefix:])
                attention[row, width - len(ids) + prefix:] = 1
            input_ids, attention = input_ids.to(device), attention.to(device)
            cache = ({cache_keyword(model): opening_cache(model, input_ids[:1, :prefix], attention[:1, :prefix],
                                                          len(batch))} if prefix else {})
            if do_sample:
                torch.manual_seed(seed + number)
            generated = model.generate(input_ids=input_ids, attention_mask=attention, generation_config=config, **cache)
            for row, index in enumerate(batch):
                new = generated[row, width:].tolist()
                cut = next((t for t, token in enumerate(new) if token in stops), len(new))
                outputs[index] = tokenizer.decode(new[:cut], skip_special_tokens=True).strip()
            bar.advance(task, len(batch))
    return outputs


@dataclass
class TokenScores:
    """Per answer token: log-probability under the model, and (with stats) the mean and standard
    deviation of the log-probability over the vocabulary at that position (for min-k%++)."""

    logprobs: np.ndarray
    mean: np.ndarray | None = None
    std: np.ndarray | None = None

    @property
    def nll(self) -> float:
        return float(-self.logprobs.mean())


def score_answers(model, rows: list[Encoded], pad_id: int, batch_size: int,
                  stats: bool = False) -> list[TokenScores]:
    """Teacher-forced log-probabilities of each row's answer tokens given its prompt."""
    device = next(model.parameters()).device
    scores: list[TokenScores] = [TokenScores(np.zeros(0))] * len(rows)
    with eval_mode(model):
        for batch in _batches(list(range(len(rows))), batch_size):
            padded = pad_rows([rows[i] for i in batch], pad_id)
            logits = model(input_ids=padded["input_ids"].to(device),
                           attention_mask=padded["attention_mask"].to(device)).logits[:, :-1].float()
            labels = padded["labels"][:, 1:].to(device)
            logp = torch.log_softmax(logits, dim=-1)
            token_logp = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            if stats:
                probs = logp.exp()
                mean = (probs * logp).sum(-1)
                std = ((probs * logp.square()).sum(-1) - mean.square()).clamp(min=1e-12).sqrt()
            for row, index in enumerate(batch):
                keep = labels[row] != IGNORE
                scores[index] = TokenScores(
                    token_logp[row][keep].cpu().numpy(),
                    mean[row][keep].cpu().numpy() if stats else None,
                    std[row][keep].cpu().numpy() if stats else None)
    return scores
