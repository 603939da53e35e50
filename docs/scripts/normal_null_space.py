"""Could a null-space constrained update (AlphaEdit-style: the update of each linear layer projected
onto the directions its inputs on normal data do not use) change harmful prompts and leave normal
ones alone? Only if harmful prompts put more of their input energy into that null space than unseen
normal prompts do.

For every linear layer's input (attention, o_proj, MLP up, down_proj) of smollm2-135m-instruct: the
covariance over all prompt tokens of the harmful preset's normal prompts (TruthfulQA rows 0-79 and
120-239, XSTest safe rows 0-59, Dolly instructions 0-199); its null space (eigenvalues below a
threshold times the largest); and the share of the squared norm of the last prompt token's input
(where the answer starts) that falls in it, for the forget prompts (BeaverTails 0-99), the unseen
harmful prompts (100-139), the unseen normal prompts (TruthfulQA 80-119) and unseen benign
lookalikes (XSTest safe 90-149). docs/results.md, "Null space of the normal data", was measured with
(about 6 minutes on 2 cores):

    python docs/scripts/normal_null_space.py
"""
import csv
import json

import torch

from unlearn.data.encoding import PairEncoder
from unlearn.models.loading import load_model

DATA = "../shared/data/"

model, tokenizer = load_model("smollm2-135m-instruct")
model.eval()
encoder = PairEncoder(tokenizer, "auto", 256)
truthfulqa = [r["Question"] for r in csv.DictReader(open(DATA + "truthfulqa/TruthfulQA.csv"))]
beavertails = [r["prompt"] for r in csv.DictReader(open(DATA + "harmful/beavertails_sample_140.csv"))]
xstest = [r["prompt"] for r in csv.DictReader(open(DATA + "overrefusal/xstest_dev_270.csv")) if r["label"] == "safe"]
dolly = [json.loads(line)["instruction"] for line in open(DATA + "instructions/dolly_benign_506.jsonl")]
normal = truthfulqa[:80] + truthfulqa[120:240] + xstest[:60] + dolly[:200]
probes = {"forget": beavertails[:100], "unseen harmful": beavertails[100:140],
          "unseen normal": truthfulqa[80:120], "unseen lookalikes": xstest[90:150]}

layers = {}
for i, layer in enumerate(model.model.layers):
    layers.update({f"{i}.attn_in": layer.self_attn.q_proj, f"{i}.o_in": layer.self_attn.o_proj,
                   f"{i}.mlp_in": layer.mlp.up_proj, f"{i}.down_in": layer.mlp.down_proj})


def inputs(prompts: list[str], last_only: bool) -> dict[str, torch.Tensor]:
    seen = {name: [] for name in layers}
    hooks = [module.register_forward_pre_hook(
        lambda m, args, name=name: seen[name].append(args[0][0, -1:] if last_only else args[0][0]))
        for name, module in layers.items()]
    with torch.no_grad():
        for prompt in prompts:
            model(input_ids=torch.tensor([encoder.prompt_ids(prompt)]))
    for hook in hooks:
        hook.remove()
    return {name: torch.cat(rows).double() for name, rows in seen.items()}


fit = inputs(normal, last_only=False)
probed = {name: inputs(prompts, last_only=True) for name, prompts in probes.items()}
for threshold in (1e-2, 1e-3):
    shares = {name: [] for name in probes}
    for layer in layers:
        covariance = fit[layer].T @ fit[layer] / len(fit[layer])
        values, vectors = torch.linalg.eigh(covariance)
        null = vectors[:, values < threshold * values.max()]
        for name, x in probed.items():
            shares[name].append(((x[layer] @ null).norm(dim=1) ** 2 / x[layer].norm(dim=1) ** 2).mean().item())
    print(f"threshold {threshold:g}: mean share of the input in the normal data's null space, over "
          f"{len(layers)} layer inputs: " + ", ".join(f"{n} {sum(v) / len(v):.3f}" for n, v in shares.items()))
