"""Where a run's similarity to the original on normal prompts goes: each normal prompt's answer after
unlearning against the original's, sorted into four kinds, with the similarity each kind costs.

- identical: the same text;
- new refusal: the answer refuses (the evaluation's refusal phrases) and the original's did not;
- early stop: the answer has fewer than 60% of the original's words (mostly: the original's first
  sentence, then the end of the answer - what one-sentence refusal targets teach);
- rewritten: everything else (the answer drifts from the original's somewhere along the way).

"loss share" is the kind's sum of (1 - similarity) over all normal prompts: the kinds' shares add up
to 1 - similarity_to_original@normal. docs/results.md ("Answers that stop early") was measured with

    python docs/scripts/normal_answer_changes.py runs/h19/stop30 runs/h19/idk-hold1
"""
import argparse
import json
from collections import defaultdict
from pathlib import Path

from unlearn.evaluation.embedding import embed
from unlearn.evaluation.metrics import cosine_to, is_refusal

EARLY = 0.6


def kind(before: str, after: str) -> str:
    if before == after:
        return "identical"
    if is_refusal(after) and not is_refusal(before):
        return "new refusal"
    if len(after.split()) < EARLY * len(before.split()):
        return "early stop"
    return "rewritten"


def changes(run: Path, subset: str) -> dict:
    answers = defaultdict(dict)
    for line in (run / "generations.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["subset"] == subset:
            answers[row["prompt"]][row["stage"]] = row["output"]
    pairs = [(a["before"], a["after"]) for a in answers.values() if "before" in a and "after" in a]
    if not pairs:
        raise SystemExit(f"{run}/generations.jsonl: no '{subset}' prompts with answers before and after")
    similarity = cosine_to([a for _, a in pairs], [b for b, _ in pairs], embed)
    kinds = defaultdict(list)
    for (before, after), s in zip(pairs, similarity):
        kinds[kind(before, after)].append(s)
    return {"prompts": len(pairs), "similarity": sum(similarity) / len(pairs),
            "kinds": {k: {"prompts": len(v), "mean_similarity": sum(v) / len(v),
                          "loss_share": sum(1 - s for s in v) / len(pairs)} for k, v in kinds.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders with generations.jsonl (before and after)")
    parser.add_argument("--subset", default="normal")
    args = parser.parse_args()
    for run in args.runs:
        result = changes(run, args.subset)
        print(f"{run}: {result['prompts']} {args.subset} prompts, similarity {result['similarity']:.3f}")
        for name in ("identical", "new refusal", "early stop", "rewritten"):
            k = result["kinds"].get(name)
            if k:
                print(f"  {name:12s} {k['prompts']:3d} prompts  mean similarity {k['mean_similarity']:.3f}  "
                      f"loss share {k['loss_share']:.3f}")


if __name__ == "__main__":
    main()
