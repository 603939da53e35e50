"""`python benchmarks/bench.py` runs end to end on a tiny model (figures are not checked: no timing
assertions in tests; BENCHMARKS.md holds the real numbers)."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench.py"
_spec = importlib.util.spec_from_file_location("bench", BENCH)
bench = sys.modules["bench"] = importlib.util.module_from_spec(_spec)  # dataclasses look their module up
_spec.loader.exec_module(bench)
CONFIGS, data_section, plan_step, synthetic_files = bench.CONFIGS, bench.data_section, bench.plan_step, bench.synthetic_files


def test_synthetic_data_has_the_harmful_qa_shape(tmp_path):
    files = synthetic_files(tmp_path)
    forget = [json.loads(line) for line in open(files["forget"]["path"])]
    normal = [json.loads(line) for line in open(files["normal"]["path"])]
    assert len(forget) == 40 and len(normal) == 80
    assert min(len(r["response"]) for r in forget) > max(len(r["Best Answer"]) for r in normal)
    assert data_section(Namespace(forget=None, normal=None), tmp_path)[1].startswith("synthetic")


def test_bench_runs_both_sides_with_equal_losses(tiny_llama, tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, str(BENCH), "--model", str(tiny_llama),
                           "--configs", "lora,full,lora-bf16w", "--warmup", "1", "--steps", "1", "--max-length", "96",
                           "--gen-prompts", "3", "--gen-tokens", "4", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ours/ref" in done.stdout and "generation" in done.stdout
    report = json.loads(out.read_text())
    for key in ("speedup_steps_per_s", "memory_ratio", "generation_speedup", "speedup_bf16_vs_reference_fp32"):
        assert report[key] > 0
    for name in ("lora", "full", "lora-bf16w"):
        result = report["configs"][name]
        assert result["losses_agree"] and result["mismatch_tokens_match"]
        for side in ("ours", "reference"):
            assert result[side]["steps_per_s"] > 0 and result[side]["peak_rss_mb"] > 0
            assert 0 < result[side]["mfu"] < 1
    assert set(CONFIGS) >= {"lora", "full", "lora-bf16"}


def test_plan_step_splits_a_step_batch_back_into_the_papers_inputs(tiny_llama, tmp_path):
    from unlearn.config import load_config
    from unlearn.data.batches import build_data
    from unlearn.models.loading import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_llama))
    config = load_config(raw={"model": {"name": str(tiny_llama)}, "data": synthetic_files(tmp_path)})
    data = build_data(config.data, tokenizer, seed=1, batch_size=2, normal_batch_size=2, mismatch_k=3)
    batch = data.step_batch(0)
    plan = plan_step(batch, tokenizer)
    assert len(plan.forget) == 2 and len(plan.normal) == 2
    assert [len(a) for a in plan.mismatch_answers] == [3, 3]
    mismatch = [row for row, group in zip(batch.input_ids, batch.row_group) if group == "mismatch"]
    first = mismatch[0][batch.attention_mask[batch.row_group.index("mismatch")].bool()].tolist()
    prompt = tokenizer(tokenizer.decode(plan.forget[0].prompt_ids), add_special_tokens=False)["input_ids"]
    answer = tokenizer(plan.mismatch_answers[0][0], add_special_tokens=False)["input_ids"]
    assert prompt + answer == first  # decoding and re-tokenising gives back the same tokens


def test_finetune_bench_runs_every_side(tiny_llama):
    script = BENCH.parent / "finetune_bench.py"
    done = subprocess.run([sys.executable, str(script), "--model", str(tiny_llama), "--steps", "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if "s/step" in line]
    assert [line.split("  ")[0].strip() for line in lines] == [
        "plain (autocast, all positions)", "ours float32", "ours bf16 + fp32 masters, no shared prefix",
        "ours bf16 + fp32 masters"]
    losses = [float(line.rsplit(" ", 1)[1]) for line in lines]
    assert max(losses) - min(losses) < 0.05 * max(losses)  # one step from the same weights: the same loss


def test_rr_balance_prints_each_retain_weight_from_the_same_start(tiny_llama, tmp_path, capsys):
    forget, normal = tmp_path / "forget.csv", tmp_path / "normal.csv"
    forget.write_text("prompt,response\n" + "".join(f"how do I do bad thing {i}?,step one is {i}\n" for i in range(2)))
    normal.write_text("Question,Best Answer\n" + "".join(f"what is {i} plus {i}?,it is {2 * i}\n" for i in range(4)))
    spec = importlib.util.spec_from_file_location("rr_balance", BENCH.parent / "rr_balance.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(["--model", str(tiny_llama), "--forget", str(forget), "--normal", str(normal), "--rows", "2",
                 "--layers", "1", "--steps", "2", "--retain-weights", "0,1", "--init-noise", "0.01", "--center"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("retain")]
    assert [line.split("  ")[:2] for line in lines] == [
        ["retain 0", "step 1"], ["retain 0", "step 2"], ["retain 1", "step 1"], ["retain 1", "step 2"]]
    first = [line.split("forget cosine ")[1].split()[0] for line in lines if "step 1" in line]
    assert first[0] == first[1]  # both weights start from the same seeded adapters
    assert float(first[0]) < 1.0  # the random start is off the original (cosine below its maximum)
