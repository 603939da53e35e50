"""Does any weight change of this size move the normal answers, or only the trained one?

Greedy answers of smollm2-135m-instruct to the harmful preset's 40 unseen normal prompts
(TruthfulQA rows 80-119, 48 tokens) after W_original + a * D, for D = a run's update
(W_run - W_original) and for a random D of the same norm per tensor; similarity to the original's
answers as in the evaluation (MiniLM cosine). docs/results.md, "Where the normal answers' change
comes from", was measured with:

    OMP_NUM_THREADS=1 python docs/scripts/update_direction_control.py RUN/model/model.safetensors
"""
import csv
import sys

import torch
from safetensors.torch import load_file

from unlearn.data.encoding import PairEncoder
from unlearn.evaluation.embedding import embed
from unlearn.evaluation.generation import answer_stop_ids, generate
from unlearn.evaluation.metrics import cosine_to
from unlearn.models.loading import load_model, load_tokenizer

TRUTHFULQA = "../shared/data/truthfulqa/TruthfulQA.csv"

tokenizer = load_tokenizer("smollm2-135m-instruct")
model = load_model("smollm2-135m-instruct")[0]
encoder = PairEncoder(tokenizer, "auto", 256)
rows = list(csv.DictReader(open(sys.argv[2] if len(sys.argv) > 2 else TRUTHFULQA)))[80:120]
prompts = [encoder.prompt_ids(row["Question"]) for row in rows]


def answers() -> list[str]:
    return generate(model, tokenizer, prompts, 48, 20, stop_ids=answer_stop_ids(tokenizer, encoder))


before = answers()
original = {k: v.clone() for k, v in model.state_dict().items()}
tuned = load_file(sys.argv[1])
update = {k: tuned[k].float() - original[k] for k in original if k in tuned}
generator = torch.Generator().manual_seed(0)
for label, scale, random_direction in [("run x0.1", .1, False), ("run x0.25", .25, False), ("run x0.5", .5, False),
                                       ("run x1", 1, False), ("random x1", 1, True), ("random x0.25", .25, True)]:
    state = {}
    for key, weight in original.items():
        change = update.get(key)
        if change is not None and random_direction and change.abs().max() > 0:
            noise = torch.randn(change.shape, generator=generator)
            change = noise * change.norm() / noise.norm()
        state[key] = weight if change is None else weight + scale * change
    model.load_state_dict(state)
    after = answers()
    similarity = cosine_to(after, before, embed)
    print(f"{label}: similarity {sum(similarity) / len(similarity):.3f}, "
          f"identical answers {sum(a == b for a, b in zip(after, before))} of {len(before)}", flush=True)
