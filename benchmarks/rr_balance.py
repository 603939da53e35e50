"""`python benchmarks/rr_balance.py`: can representation rerouting turn the forget states away while
a retain term holds the normal ones? (issue 19's `rr` measurement)

For each retain weight w, from the same LoRA start (`--init-noise`: the std of lora_B), Adam steps
on mean ReLU(cos(h, h_original)) over the forget rows' answer tokens + w * mean ||h - h_original||_2
over the normal rows' tokens, at `--layers` (the terms of `rr_reroute` / `rr_retain`, without the
schedule; the original is the same model with adapters off, gradients clipped to norm 1 as in
training). Prints, per step, the mean forget cosine (1: not rerouted) and the mean normal
distance (0: held).
"""
from __future__ import annotations

import argparse
import csv
import os
import sys


def _rows(path: str, prompt: str, response: str, limit: int, encoder):
    with open(path, newline="", encoding="utf-8") as handle:
        table = list(csv.DictReader(handle))[:limit]
    return [encoder.encode(row[prompt], row[response]) for row in table]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--forget", default="../shared/data/harmful/beavertails_sample_140.csv")
    parser.add_argument("--normal", default="../shared/data/truthfulqa/TruthfulQA.csv")
    parser.add_argument("--normal-columns", default="Question,Best Answer")
    parser.add_argument("--rows", type=int, default=4, help="forget rows (normal rows: twice as many)")
    parser.add_argument("--retain-weights", default="0,0.01,0.1")
    parser.add_argument("--layers", default="10,20")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--init-noise", type=float, default=1e-4)
    parser.add_argument("--center", action="store_true", help="cosines of states minus the original's mean")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
    import torch
    import torch.nn.functional as F

    from unlearn.config.run import LoraConfig
    from unlearn.data.encoding import IGNORE, PairEncoder, pad_rows
    from unlearn.models.loading import load_model
    from unlearn.models.prepare import apply_lora

    base, tokenizer = load_model(args.model)
    encoder = PairEncoder(tokenizer, max_length=192)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    forget = pad_rows(_rows(args.forget, "prompt", "response", args.rows, encoder), pad_id)
    prompt_column, answer_column = args.normal_columns.split(",")
    normal = pad_rows(_rows(args.normal, prompt_column, answer_column, 2 * args.rows, encoder), pad_id)
    answer_mask = (forget["labels"] != IGNORE).float()
    normal_mask = normal["attention_mask"].float()
    layers = [int(layer) for layer in args.layers.split(",")]
    initial = {name: tensor.clone() for name, tensor in base.state_dict().items()}

    def states(model, batch):
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        return model(**inputs, output_hidden_states=True, use_cache=False).hidden_states

    for weight in [float(w) for w in args.retain_weights.split(",")]:
        base.load_state_dict(initial)
        torch.manual_seed(0)
        model = apply_lora(base, LoraConfig(r=16, alpha=32, init_noise=args.init_noise))
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
        with torch.no_grad(), model.disable_adapter():
            forget_original, normal_original = states(model, forget), states(model, normal)
        for step in range(1, args.steps + 1):
            forget_now, normal_now = states(model, forget), states(model, normal)
            cosines, distances = [], []
            for layer in layers:
                now, original = forget_now[layer].float(), forget_original[layer].float()
                if args.center:
                    center = (original * answer_mask[..., None]).sum((0, 1)) / answer_mask.sum()
                    now, original = now - center, original - center
                cosine = F.relu(F.cosine_similarity(now, original, dim=-1))
                cosines.append((cosine * answer_mask).sum() / answer_mask.sum())
                distance = (normal_now[layer].float() - normal_original[layer].float()).norm(dim=-1)
                distances.append((distance * normal_mask).sum() / normal_mask.sum())
            cosine, distance = torch.stack(cosines).mean(), torch.stack(distances).mean()
            optimizer.zero_grad(set_to_none=True)
            (cosine + weight * distance).backward()
            norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            print(f"retain {weight:g}  step {step}  forget cosine {cosine.item():.5f}  "
                  f"normal distance {distance.item():.3f}  grad norm {norm.item():.4f}", flush=True)
        base = model.unload()  # the bare model again (adapters dropped) for the next weight


if __name__ == "__main__":
    main()
