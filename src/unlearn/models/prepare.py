"""Make a model trainable (LoRA or full), give access to the original, and save results."""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from pathlib import Path

import torch

from unlearn.config import LoraConfig
from unlearn.io import atomic_dir


def apply_lora(model, lora: LoraConfig):
    from peft import LoraConfig as PeftLoraConfig, get_peft_model

    config = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                            target_modules=lora.target_modules, task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    if lora.init_noise:  # a seeded random start, the same on every process and every run
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * lora.init_noise)
    return model


def frozen_copy(model):
    """The original model for a full fine-tune: a copy with gradients off, in eval mode."""
    reference = copy.deepcopy(model)
    reference.eval()
    reference.requires_grad_(False)
    return reference


@torch.no_grad()
def scale_update(model, factor: float, original=None) -> None:
    """W_original + factor * (W - W_original), in place. LoRA (the original is the model with its
    adapters off): every B matrix times `factor`, which scales B @ A exactly; a full fine-tune:
    every parameter against `original`'s."""
    if factor == 1.0:
        return
    if original is None:
        scaled = [p for name, p in model.named_parameters() if "lora_B" in name or "lora_embedding_B" in name]
        if not scaled:
            raise ValueError("scale_update: no LoRA B matrices and no original weights to scale against")
        for param in scaled:
            param.mul_(factor)
        return
    start = dict(original.named_parameters())
    for name, param in model.named_parameters():
        base = start[name].to(param.dtype)
        param.copy_(base + factor * (param - base))


@contextlib.contextmanager
def original_model(model, frozen=None):
    """The model before unlearning: the frozen copy (a full fine-tune), else the model with its
    adapters disabled (LoRA), else the model itself (nothing changed it yet: the 'before' stage).
    In eval mode: the original's distribution has no dropout noise (OPT and GPT-2 train with
    dropout 0.1, which would otherwise make the KL target random)."""
    if frozen is not None:
        yield frozen
        return
    training = model.training
    model.eval()
    try:
        inner = unwrap(model)
        with inner.disable_adapter() if hasattr(inner, "disable_adapter") else contextlib.nullcontext():
            yield model
    finally:
        model.train(training)


def num_layers(model) -> int | None:
    """The decoder layers of a model (or of a model's config)."""
    config = getattr(model, "config", model)
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if config is not None and getattr(config, key, None):
            return int(getattr(config, key))
    return None


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a run holds for its weights and training state (activations are not counted)."""
    parameters: int
    trainable: int
    weights: int  # the model (and its LoRA adapters)
    frozen_copy: int  # the original beside a full fine-tune, when something reads it
    training_state: int  # gradients and the two AdamW moments of the trainable parameters

    @property
    def total(self) -> int:
        return self.weights + self.frozen_copy + self.training_state


def estimate_memory(model_config, dtype: str, lora: LoraConfig | None, keeps_copy: bool,
                    trust_remote_code: bool = False) -> MemoryEstimate:
    """From the model's config alone: the network is built on the meta device (no memory, no weights)
    and the LoRA adapters applied to it, so the counts are exact; bytes follow the dtype (adapters
    are float32, as peft keeps them)."""
    from transformers import AutoModelForCausalLM

    from unlearn.models.loading import DTYPES

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config, trust_remote_code=trust_remote_code)
        parameters = sum(p.numel() for p in model.parameters())
        if lora is not None:
            model = apply_lora(model, lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    size = DTYPES[dtype].itemsize
    trainable_size = 4 if lora is not None else size
    adapters = trainable * trainable_size if lora is not None else 0
    return MemoryEstimate(parameters, trainable, parameters * size + adapters, parameters * size if keeps_copy else 0,
                          3 * trainable * trainable_size)


def is_lora(model) -> bool:
    return hasattr(model, "peft_config")


def unwrap(model):
    """The model inside a DDP wrapper (a PEFT model has a `module`-free interface of its own)."""
    return model.module if hasattr(model, "module") and not hasattr(model, "disable_adapter") else model


def save_model(model, tokenizer, output_dir: Path, save: str) -> dict[str, str]:
    """Write `adapter/` and/or `model/` (merged, safetensors) atomically; returns the paths."""
    paths = {}
    if save == "none":
        return paths
    if is_lora(model) and save in ("adapter", "both"):
        with atomic_dir(output_dir / "adapter") as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        paths["adapter"] = str(output_dir / "adapter")
    if save in ("merged", "both"):
        merged = model
        if is_lora(model):
            merged = copy.deepcopy(model).merge_and_unload()
        with atomic_dir(output_dir / "model") as tmp:
            merged.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        paths["model"] = str(output_dir / "model")
    return paths


def trainable_state(model) -> dict[str, torch.Tensor]:
    """Only what training changes: LoRA weights, or every parameter of a full fine-tune."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [name for name in state if name not in params]
    if missing:
        raise ValueError(f"checkpoint does not match the model (e.g. {missing[0]})")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)
