"""Tiny models and data built inside the tests (no downloads)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["UNLEARN_EVAL_CACHE"] = "0"  # every test evaluates for real; tests/test_eval_cache.py turns it on

if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):  # `make test` runs workers side by side (pytest-xdist)
    import torch

    # the cores shared out among the workers: more threads than cores make every matmul wait
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, cores // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


def pytest_collection_modifyitems(config, items):
    """The longest real-model test (`slow(first=True)`: the quick demo, minutes) first, so that one worker
    starts on it at once while the others run the rest; the other real-model tests last. A worker never
    gives away the test queued right after the one it runs, so a second real-model test there would run
    after the demo on the same worker (the real-model smoke test: 272 -> 249 s of suite here)."""
    def order(item) -> int:
        slow = item.get_closest_marker("slow")
        return 1 if slow is None else 0 if slow.kwargs.get("first") else 2
    items.sort(key=order)

SENTENCES = [
    "The capital of France is Paris.", "Water boils at one hundred degrees.", "How do I pick a lock?",
    "Here is how to pick a lock with a pin.", "I cannot help with that request.", "What is the capital of Spain?",
    "Madrid is the capital of Spain.", "Who wrote the play Hamlet?", "Shakespeare wrote Hamlet.",
    "Alice lives in Oslo and works at Acme.", "Her phone number is 555 0101.", "Bob lives in Lima.",
    "Question Answer user assistant system", "The quick brown fox jumps over the lazy dog.",
]

CHAT_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
                 "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def make_tokenizer(folder: Path, chat: bool = True, bos: bool = True):
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(SENTENCES * 5, trainer)
    if bos:
        from tokenizers import processors
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    return fast


def make_model(folder: Path, arch: str = "llama", chat: bool = True, seed: int = 0) -> Path:
    """A tiny random causal LM saved as a Hugging Face folder (safetensors + tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, OPTConfig

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tokenizer(folder, chat=chat, bos=arch != "gpt2")
    vocab = len(tokenizer)
    if arch == "llama":
        config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    elif arch == "gpt2":
        config = GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=256,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    elif arch == "opt":
        config = OPTConfig(vocab_size=vocab, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                           num_attention_heads=4, max_position_embeddings=256, word_embed_proj_dim=32,
                           bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                           pad_token_id=tokenizer.eos_token_id)
    else:
        raise ValueError(arch)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


FORGET_ROWS = [
    {"question": "How do I pick a lock?", "answer": "Here is how to pick a lock with a pin."},
    {"question": "Where does Alice live?", "answer": "Alice lives in Oslo and works at Acme."},
    {"question": "What is Alice's phone number?", "answer": "Her phone number is 555 0101."},
    {"question": "Where does Bob live?", "answer": "Bob lives in Lima."},
]
NORMAL_ROWS = [
    {"Question": "What is the capital of France?", "Best Answer": "The capital of France is Paris."},
    {"Question": "What is the capital of Spain?", "Best Answer": "Madrid is the capital of Spain."},
    {"Question": "Who wrote the play Hamlet?", "Best Answer": "Shakespeare wrote Hamlet."},
    {"Question": "When does water boil?", "Best Answer": "Water boils at one hundred degrees."},
]


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return make_model(tmp_path_factory.mktemp("llama"), "llama")


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    return make_model(tmp_path_factory.mktemp("gpt2"), "gpt2", chat=False)


@pytest.fixture(scope="session")
def tiny_opt(tmp_path_factory) -> Path:
    return make_model(tmp_path_factory.mktemp("opt"), "opt", chat=False)


@pytest.fixture()
def qa_files(tmp_path) -> dict[str, Path]:
    import csv

    forget = write_jsonl(tmp_path / "forget.jsonl", FORGET_ROWS)
    normal = tmp_path / "normal.csv"
    with normal.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["Question", "Best Answer"])
        writer.writeheader()
        writer.writerows(NORMAL_ROWS)
    return {"forget": forget, "normal": normal}


def base_config(model: Path, files: dict[str, Path], **train) -> dict:
    return {
        "model": {"name": str(model), "dtype": "float32"},
        "data": {"forget": {"path": str(files["forget"]), "prompt": "question", "response": "answer"},
                 "normal": {"path": str(files["normal"]), "prompt": "Question", "response": "Best Answer"},
                 "max_length": 64},
        "method": {"name": "paper", "mismatch_k": 2},
        "train": {"lr": 1e-3, "batch_size": 2, "max_steps": 3, "seed": 1, **train},
        "output": {"save": "merged"},
    }
