"""Turn (prompt, response) pairs into token ids with answer-only labels.

The prompt part (everything the model sees before the answer, template included) and the answer
part are tokenised separately and concatenated, so the answer start is a token index by
construction - never string-length arithmetic (the paper code's off-by-one). The same prompt ids
are what generation is conditioned on, so training and evaluation see identical prefixes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

PAPER_TEMPLATE = "### Question: {prompt}\n### Answer: {response}"
IGNORE = -100
_SENTINEL = "\uE000unlearn-answer\uE000"


@dataclass
class Encoded:
    prompt_ids: list[int]
    answer_ids: list[int]
    truncated: bool = False

    @property
    def input_ids(self) -> list[int]:
        return self.prompt_ids + self.answer_ids

    @property
    def labels(self) -> list[int]:
        return [IGNORE] * len(self.prompt_ids) + self.answer_ids


@dataclass
class TruncationCount:
    truncated: int = 0
    dropped: int = 0


class PairEncoder:
    """Encodes prompts and answers for one template.

    template: 'auto' (the tokenizer's chat template if it has one, else the paper's format),
    'raw' (prompt and answer concatenated: plain-text continuation), or a format string with
    {prompt} and a trailing {response}.
    """

    def __init__(self, tokenizer, template: str = "auto", max_length: int = 256):
        self.tokenizer = tokenizer
        self.max_length = max_length
        if template == "auto":
            template = "chat" if getattr(tokenizer, "chat_template", None) else PAPER_TEMPLATE
        self.mode = template if template in ("chat", "raw") else "format"
        self.template = template
        self.end_of_answer = self._end_of_answer()

    def _end_of_answer(self) -> str:
        """Text the template puts after an answer (e.g. '<|im_end|>'), trained as answer tokens
        so the model keeps learning where to stop."""
        if self.mode == "chat":
            rendered = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": "q"}, {"role": "assistant", "content": _SENTINEL}], tokenize=False)
            return rendered.split(_SENTINEL, 1)[1].rstrip()
        if self.mode == "format":
            return self.tokenizer.eos_token or ""
        return ""

    def prompt_text(self, prompt: str) -> str:
        if self.mode == "chat":
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        if self.mode == "raw":
            return prompt
        return self.template.split("{response}")[0].format(prompt=prompt).rstrip(" ")

    def prompt_ids(self, prompt: str) -> list[int]:
        text = self.prompt_text(prompt)
        # chat templates write their own BOS; format strings and raw text get the tokenizer's
        return self.tokenizer(text, add_special_tokens=self.mode != "chat")["input_ids"]

    def answer_ids(self, response: str) -> list[int]:
        if self.mode == "format":
            # the space the format string puts before {response} goes with the answer's first word
            gap = self.template.split("{response}")[0]
            response = gap[len(gap.rstrip(" ")):] + response
        ids = self.tokenizer(response, add_special_tokens=False)["input_ids"]
        if self.mode == "format" and self.tokenizer.eos_token_id is not None:
            return ids + [self.tokenizer.eos_token_id]
        if self.end_of_answer:
            ids = ids + self.tokenizer(self.end_of_answer, add_special_tokens=False)["input_ids"]
        return ids

    def fit(self, prompt_ids: list[int], answer_ids: list[int]) -> Encoded | None:
        """Truncate to max_length: the answer's tail goes first; a prompt that leaves no room
        for one answer token is dropped (None)."""
        room = self.max_length - len(prompt_ids)
        if room < 1 or not answer_ids:
            return None
        truncated = len(answer_ids) > room
        return Encoded(list(prompt_ids), list(answer_ids[:room]), truncated)

    def encode(self, prompt: str, response: str) -> Encoded | None:
        return self.fit(self.prompt_ids(prompt), self.answer_ids(response))


def pad_rows(rows: list[Encoded], pad_id: int, side: str = "right") -> dict[str, torch.Tensor]:
    """Pad to the longest row; padding carries attention 0 and label IGNORE."""
    width = max(len(r.input_ids) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row.input_ids)
        where = slice(0, n) if side == "right" else slice(width - n, width)
        input_ids[i, where] = torch.tensor(row.input_ids)
        labels[i, where] = torch.tensor(row.labels)
        attention[i, where] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
