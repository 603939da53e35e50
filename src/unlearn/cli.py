"""Command line: `unlearn run | eval | report | demo | finetune | compare | leaderboard | interpolate`."""
from __future__ import annotations

import functools
import json
import logging
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from unlearn.errors import INPUT_ERRORS

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Make a causal LM stop producing specific outputs, from examples of them.")
_state = {"debug": False}


@app.callback()
def main(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks."),
         quiet: bool = typer.Option(False, "--quiet", help="Only warnings and errors.")):
    _state["debug"] = debug
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(message)s")
    for noisy in ("httpx", "urllib3", "datasets", "filelock", "accelerate", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def guarded(command):
    """Bad input: one line on stderr, exit 2. A failure during the run: exit 1."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except INPUT_ERRORS as exc:
            if _state["debug"]:
                raise
            print(f"error: {exc}", file=sys.stderr)
            raise typer.Exit(2)
        except (KeyboardInterrupt, typer.Exit):
            raise
        except Exception as exc:  # noqa: BLE001 - the run failed; say so in one line
            if _state["debug"]:
                raise
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            print(f"error: run failed: {type(exc).__name__}: {message} (rerun with --debug for details)",
                  file=sys.stderr)
            raise typer.Exit(1)
    return wrapper


SetOption = typer.Option(None, "--set", help="Override a config key: --set train.lr=1e-4 (repeatable).")


@app.command("run")
@guarded
def run_command(config: Path = typer.Argument(..., help="YAML config."),
                output_dir: Path = typer.Option(..., "--output-dir", "-o", help="Where results go."),
                set_: Optional[list[str]] = SetOption,
                resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint."),
                overwrite: bool = typer.Option(False, "--overwrite", help="Replace a run already in OUTPUT_DIR."),
                trust_remote_code: bool = typer.Option(False, "--trust-remote-code"),
                allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow pickle (*.bin) weights."),
                dry_run: bool = typer.Option(False, "--dry-run", help="Check and count everything, load no "
                                             "weights, print what would run.")):
    """Unlearn: train on the config's forget/normal data and save the model."""
    from unlearn.config import load_config

    overrides = list(set_ or [])
    overrides += ["model.trust_remote_code=true"] if trust_remote_code else []
    overrides += ["model.allow_pickle=true"] if allow_pickle else []
    cfg = load_config(config, overrides)  # before importing torch: a config error fails in a second
    from unlearn.run import plan, run

    if dry_run:
        print("\n".join(plan(cfg, output_dir, resume=resume, overwrite=overwrite)))
        return
    result = run(cfg, output_dir, resume=resume, overwrite=overwrite)  # checks its input before loading weights
    _print_outcome(result)
    if result.summary.get("diverged"):  # the output is written, but the run did not go as asked
        print(f"error: run {result.summary['stop_reason']} (see {output_dir / 'summary.json'})", file=sys.stderr)
        raise typer.Exit(1)


def _print_outcome(result) -> None:
    from unlearn.ui import console

    summary = result.summary
    console.print(f"[bold]done[/bold]: {summary['steps']} steps, {summary['stop_reason']}")
    for kind, path in result.paths.items():
        console.print(f"  {kind}: {path}")
    if result.metrics:
        from unlearn.layout import RunFolder
        from unlearn.report.build import metrics_table

        console.print(metrics_table(json.loads(RunFolder(result.output_dir).metrics.read_text())))
    console.print(f"  results: {result.output_dir}")


@app.command("eval")
@guarded
def eval_command(config: Path = typer.Argument(..., help="YAML config with an eval: section."),
                 model: str = typer.Option(..., "--model", help="HF folder, adapter folder, alias or .gguf."),
                 output_dir: Path = typer.Option(..., "--output-dir", "-o"),
                 set_: Optional[list[str]] = SetOption,
                 overwrite: bool = typer.Option(False, "--overwrite")):
    """Evaluate any model with the config's eval: section (writes metrics.json, generations.jsonl)."""
    from unlearn.evaluation.runner import evaluate_model

    evaluate_model(config, model, output_dir, overrides=list(set_ or []), overwrite=overwrite)
    from unlearn.layout import RunFolder
    from unlearn.report.build import metrics_table
    from unlearn.ui import console

    console.print(metrics_table(json.loads(RunFolder(output_dir).metrics.read_text())))  # with directions


@app.command("report")
@guarded
def report_command(output_dir: Path = typer.Argument(..., help="A run's output folder.")):
    """Rebuild report.html and report.md from the files in OUTPUT_DIR."""
    from unlearn.report.build import build_report

    paths = build_report(output_dir)
    print("\n".join(str(p) for p in paths))


@app.command("demo")
@guarded
def demo_command(output_dir: Path = typer.Option(Path("runs/demo"), "--output-dir", "-o"),
                 quick: bool = typer.Option(False, "--quick", help="Smaller scenario (CI)."),
                 overwrite: bool = typer.Option(True, "--overwrite/--no-overwrite")):
    """The built-in scenario: make a real model leak fictitious people's data, then unlearn it."""
    from unlearn.demo import run_demo

    run_demo(output_dir, quick=quick, overwrite=overwrite)


@app.command("finetune")
@guarded
def finetune_command(
        model: str = typer.Option(..., "--model", help="Alias, HF folder, hub id or .gguf to start from."),
        data: list[str] = typer.Option(..., "--data", help="A data file (repeatable), or a YAML mapping with a "
                                       "data source's keys: '{path: book.txt, skip: 1, limit: 44}'."),
        output_dir: Path = typer.Option(..., "--output-dir", "-o", help="New or empty folder for the model."),
        epochs: int = typer.Option(..., "--epochs"),
        lr: float = typer.Option(..., "--lr"),
        batch_size: int = typer.Option(8, "--batch-size"),
        seed: int = typer.Option(0, "--seed"),
        prompt: str = typer.Option("prompt", "--prompt", help="Prompt field of structured files."),
        response: str = typer.Option("response", "--response", help="Response field of structured files."),
        window_tokens: int = typer.Option(128, "--window-tokens", help="Plain text: tokens per window."),
        prompt_tokens: int = typer.Option(32, "--prompt-tokens", help="Plain text: prompt tokens per window."),
        template: str = typer.Option("auto", "--template", help="As data.template (plain text is always raw)."),
        max_length: int = typer.Option(256, "--max-length", help="Prompt + answer tokens per row."),
        precision: str = typer.Option("auto", "--precision", help="auto | bf16 | float32: bf16 weights with "
                                      "float32 masters, or float32; auto: bf16 where the device multiplies it "
                                      "natively."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace the contents of a non-empty OUTPUT_DIR."),
        trust_remote_code: bool = typer.Option(False, "--trust-remote-code"),
        allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow pickle (*.bin) weights.")):
    """Set-up: full fine-tune until the model memorises DATA (so unlearning it can be measured)."""
    from unlearn.finetune import run_finetune
    from unlearn.ui import console

    defaults = {"prompt": prompt, "response": response, "window_tokens": window_tokens, "prompt_tokens": prompt_tokens}
    result = run_finetune(model, data, output_dir, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                      template=template, max_length=max_length, source_defaults=defaults, overwrite=overwrite,
                      trust_remote_code=trust_remote_code, allow_pickle=allow_pickle, precision=precision)
    losses = ", ".join(f"{x:.3f}" for x in result.epoch_losses)
    console.print(f"[bold]done[/bold]: {result.rows} rows, {len(result.epoch_losses)} epochs in "
                  f"{result.seconds:.0f} s; loss per epoch: {losses}")
    console.print(f"  model: {result.output_dir}")


@app.command("compare")
@guarded
def compare_command(config: Path = typer.Argument(...),
                    methods: str = typer.Option("paper,npo,simnpo,graddiff,idk,rmu", "--methods"),
                    output_dir: Path = typer.Option(..., "--output-dir", "-o"),
                    set_: Optional[list[str]] = SetOption,
                    overwrite: bool = typer.Option(False, "--overwrite"),
                    forget_metric: Optional[str] = typer.Option(
                        None, "--forget-metric", help="Plotted forget metric, e.g. harmful_rate@unseen."),
                    utility_metric: Optional[str] = typer.Option(
                        None, "--utility-metric", help="Plotted utility metric, e.g. similarity_to_original@normal.")):
    """Run several methods on the same data and budget and write a leaderboard."""
    from unlearn.compare import compare

    board = compare(config, [m.strip() for m in methods.split(",") if m.strip()], output_dir,
                    overrides=list(set_ or []), overwrite=overwrite, forget_metric=forget_metric,
                    utility_metric=utility_metric)
    _print_board(board, output_dir)
    failed = [row["method"] for row in board["rows"] if row["status"] == "failed"]
    if failed:  # the leaderboard is written, but not every method ran
        print(f"error: {len(failed)} of {len(board['rows'])} methods failed ({', '.join(failed)}; see "
              f"{output_dir / 'leaderboard.json'})", file=sys.stderr)
        raise typer.Exit(1)


@app.command("leaderboard")
@guarded
def leaderboard_command(runs: list[Path] = typer.Argument(..., help="Finished `unlearn run` output folders."),
                        output_dir: Path = typer.Option(..., "--output-dir", "-o"),
                        overwrite: bool = typer.Option(False, "--overwrite"),
                        forget_metric: Optional[str] = typer.Option(
                            None, "--forget-metric", help="Plotted forget metric, e.g. harmful_rate@unseen."),
                        utility_metric: Optional[str] = typer.Option(
                            None, "--utility-metric", help="Plotted utility metric, e.g. similarity_to_original@normal.")):
    """Leaderboard and frontier (plot and table) of runs made separately, evaluated the same way."""
    from unlearn.compare import collect

    _print_board(collect(runs, output_dir, forget_metric, utility_metric, overwrite), output_dir)


def _print_board(board: dict, output_dir: Path) -> None:
    from unlearn.report.leaderboard import leaderboard_table
    from unlearn.ui import console

    console.print(leaderboard_table(board))
    console.print(f"  leaderboard: {output_dir / 'leaderboard.md'}, {output_dir / 'leaderboard.json'}")
    if (output_dir / "frontier.png").exists():
        console.print(f"  frontier plot: {output_dir / 'frontier.png'}")


@app.command("interpolate")
@guarded
def interpolate_command(run_dir: Path = typer.Argument(..., help="A finished `unlearn run` output folder."),
                        factors: list[float] = typer.Option(..., "--factor", "-f",
                                                            help="Scale of the run's update, e.g. 0.5 (repeatable)."),
                        output_dir: Path = typer.Option(..., "--output-dir", "-o"),
                        overwrite: bool = typer.Option(False, "--overwrite"),
                        evaluate: bool = typer.Option(True, "--eval/--no-eval",
                                                      help="Evaluate each point with the run's eval: section.")):
    """Models between the original and a run's: W_original + factor * (W_run - W_original), each
    evaluated like the run, so `unlearn leaderboard` can draw them on the frontier."""
    from unlearn.interpolate import interpolate

    for folder in interpolate(run_dir, factors, output_dir, overwrite, evaluate):
        print(folder)


if __name__ == "__main__":
    app()
