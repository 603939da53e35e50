"""Which precision pays on this machine (`train.mixed_precision: auto`, `unlearn finetune --precision`).

bfloat16 halves the bytes every matmul reads, but it is faster only where the hardware multiplies
in it: CUDA GPUs with bf16 (Ampere and later) and x86 CPUs with AVX512-BF16 or AMX. Elsewhere
PyTorch widens each operand to float32 and narrows the result again, and a bf16 matmul is slower
than a float32 one (measured on an AVX-512 CPU without BF16, one thread, 1024x1024: 23 against 79
GFLOP/s; on one with AVX512-BF16, 2048x2048, two threads: 1934 against 300). `auto` takes bf16 only
where it is native, so the same config runs at the faster precision of each machine.
"""
from __future__ import annotations

import functools
import logging

import torch

log = logging.getLogger(__name__)


@functools.cache
def native_bf16() -> bool:
    """Whether this process's device multiplies bfloat16 natively (the CUDA GPU if there is one)."""
    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


def resolve_mixed_precision(choice: str) -> str:
    """`auto` -> "bf16" where bf16 is native, else "no"; an explicit choice is kept (bf16 where it is
    emulated with a warning: it works, only slower than float32)."""
    if choice == "auto":
        chosen = "bf16" if native_bf16() else "no"
        log.info("mixed precision auto: %s", "bf16 (native on this device)" if chosen == "bf16"
                 else "float32 (this device has no native bf16: it would be slower)")
        return chosen
    if choice == "bf16" and not native_bf16():
        warn_emulated()
    return choice


@functools.cache
def warn_emulated() -> None:
    log.warning("bf16 on a device without native bf16 (no AVX512-BF16/AMX, or a GPU before Ampere): it runs, "
                "slower than float32; `auto` picks the faster precision of each machine")


class FrozenLowPrecision:
    """The frozen weights of linear layers held in bfloat16 for the training step, and back to their
    own dtype outside it (evaluation, validation, saving and merging see the original float32 values).

    Under bf16 autocast a frozen float32 weight is cast again at every call (autocast caches the
    casts of trainable leaves only): with LoRA that is every base weight, twice per step and again
    in the reference pass. Holding the cast once gives the step the same bf16 operands without the
    copies. Weights shared with an embedding (a tied LM head) are left alone: the embedding output
    feeds the residual stream, which autocast keeps in float32. Costs a bf16 copy of those weights.
    Takes the trained model (LoRA: its base) and the frozen copy of the original, if there is one."""

    def __init__(self, *models, dtype: torch.dtype = torch.bfloat16):
        modules = [m for model in models if model is not None for m in model.modules()]
        embeddings = {id(m.weight) for m in modules if isinstance(m, torch.nn.Embedding)}
        self.pairs = [(m.weight, m.weight.data, m.weight.data.to(dtype)) for m in modules
                      if isinstance(m, torch.nn.Linear) and not m.weight.requires_grad
                      and m.weight.dtype != dtype and id(m.weight) not in embeddings]

    def __enter__(self):
        for param, _, low in self.pairs:
            param.data = low
        return self

    def __exit__(self, *exc):
        for param, full, _ in self.pairs:
            param.data = full
