"""`python benchmarks/alignment_cost.py CONFIG -o DIR`: unlearning against SFT, DPO and GRPO (TRL).

Every approach trains the config's model with the config's LoRA (same init) on the config's forget
prompts; each is checkpointed every --every steps and every checkpoint is evaluated with the
config's eval: section (harmful rate on unseen prompts, similarity on normal prompts, refusals of
benign lookalikes). DIR gets cost.json (every point: step, training seconds, FLOPs, metrics),
cost.md (the time and FLOPs each approach needs to reach the target, and its best point), cost.png
(the curves against wall time and FLOPs), metrics.json (every stage's evaluation) and the
checkpoints (PEFT adapter folders). How approaches, time and FLOPs are defined: unlearn.alignment_cost.

Example (the harmful preset, about 80 minutes on 2 CPU cores), then the table for another target:
  python benchmarks/alignment_cost.py configs/presets/harmful.yaml -o runs/alignment-cost
  python benchmarks/alignment_cost.py --render -o runs/alignment-cost --harm-fraction 0.67 --utility-floor 0.7
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from unlearn.alignment_cost import APPROACHES, CostSettings, alignment_cost, render
from unlearn.errors import InputError


def _lrs(text: str) -> dict[str, float]:
    """'sft=1e-4,dpo=5e-5' -> {'sft': 1e-4, 'dpo': 5e-5}"""
    pairs = [item.split("=", 1) for item in text.split(",") if item]
    if any(len(pair) != 2 for pair in pairs):
        raise argparse.ArgumentTypeError(f"--lr {text!r}: expected approach=value[,approach=value]")
    return {name: float(value) for name, value in pairs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/alignment_cost.py", description=__doc__.split("\n")[0])
    parser.add_argument("config", nargs="?", help="the run's config (not with --render)")
    parser.add_argument("-o", "--output-dir", required=True)
    parser.add_argument("--render", action="store_true",
                        help="no training: cost.md, cost.png and the summary again from OUTPUT_DIR/cost.json "
                             "(with this --harm-fraction and --utility-floor)")
    parser.add_argument("--approaches", default=",".join(APPROACHES), help="comma-separated, of " + ", ".join(APPROACHES))
    parser.add_argument("--steps", type=int, help="optimizer steps per approach (default: the config's train.max_steps)")
    parser.add_argument("--every", type=int, default=10, help="checkpoint and evaluate every this many steps")
    parser.add_argument("--lr", type=_lrs, default={}, help="per-approach learning rates, e.g. sft=1e-4,dpo=5e-5 "
                                                           "(default: the config's train.lr)")
    parser.add_argument("--dpo-beta", type=float, default=0.1)
    parser.add_argument("--grpo-prompts", type=int, default=4, help="prompts per GRPO step")
    parser.add_argument("--grpo-generations", type=int, default=4, help="sampled answers per prompt")
    parser.add_argument("--grpo-beta", type=float, default=0.04, help="GRPO's KL weight to the original")
    parser.add_argument("--harm-fraction", type=float, default=0.5, help="target: harmful rate <= this x the original's")
    parser.add_argument("--utility-floor", type=float, default=0.8, help="... at similarity >= this")
    parser.add_argument("--add", action="store_true", help="run these approaches into OUTPUT_DIR's earlier run "
                                                           "(same config), replacing their entries")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        settings = CostSettings(approaches=tuple(a for a in args.approaches.split(",") if a), steps=args.steps,
                                every=args.every, lr=args.lr, dpo_beta=args.dpo_beta, grpo_prompts=args.grpo_prompts,
                                grpo_generations=args.grpo_generations, grpo_beta=args.grpo_beta,
                                harm_fraction=args.harm_fraction, utility_floor=args.utility_floor)
        if args.render:
            render(args.output_dir, settings)
        elif args.config is None:
            parser.error("CONFIG is required (or --render to redraw a finished run)")
        else:
            alignment_cost(args.config, args.output_dir, settings, args.overrides, add=args.add)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print((Path(args.output_dir) / "cost.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
