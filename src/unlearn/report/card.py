"""The model card of a saved model: `model/README.md` and `adapter/README.md` in the Hugging Face
Hub's format - YAML metadata (`base_model`, `library_name`, `tags`, `pipeline_tag`) over a markdown
body - so the model can go to a hub or a registry as it is. The body is the run's report in short:
its facts (method, steps, wall time), settings (objective weights, data sizes, training budget) and,
when the run evaluated, the before/after metrics table."""
from __future__ import annotations

from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from unlearn.config import RunConfig
from unlearn.io import atomic_write_text
from unlearn.layout import RunFolder
from unlearn.models.loading import ALIAS_HUB_IDS
from unlearn.report.build import load_report
from unlearn.report.content import Report
from unlearn.report.markdown_page import facts, metrics, settings

LIBRARIES = {"model": "transformers", "adapter": "peft"}
USAGE = {"model": ("from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                   'model = AutoModelForCausalLM.from_pretrained("{path}")\n'
                   'tokenizer = AutoTokenizer.from_pretrained("{path}")'),
         "adapter": ("from peft import AutoPeftModelForCausalLM\nfrom transformers import AutoTokenizer\n\n"
                     'model = AutoPeftModelForCausalLM.from_pretrained("{path}")  # the base model + this adapter\n'
                     'tokenizer = AutoTokenizer.from_pretrained("{path}")')}


def write_model_cards(config: RunConfig, output_dir: str | Path) -> list[Path]:
    """README.md in each saved folder (`model/`, `adapter/`) of a finished run; the paths written."""
    folder = RunFolder(output_dir)
    report = load_report(folder.root, draw=False)
    saved = [getattr(folder, kind) for kind in LIBRARIES if getattr(folder, kind).is_dir()]
    return [atomic_write_text(path / "README.md", str(model_card(config, report, path.name, path))) for path in saved]


def model_card(config: RunConfig, report: Report, kind: str, path: Path) -> ModelCard:
    base = ALIAS_HUB_IDS.get(config.model.name, config.model.name)
    method = config.method.name
    data = ModelCardData(base_model=base, library_name=LIBRARIES[kind], tags=["unlearning", method],
                         pipeline_tag="text-generation")
    shown = Path(base).name if Path(base).is_absolute() else base
    body = [f"# {shown}, unlearned with `{method}`", "",
            f"`{base}` after machine unlearning with the `{method}` method of the `unlearn` toolkit: trained to "
            "stop producing the answers of its forget set while keeping its outputs on normal data"
            + (" (this folder: the LoRA adapter)." if kind == "adapter" else "."), ""]
    body += facts(report)
    body += ["## Method, data and training budget", "", *settings(report), ""] if report.settings else []
    body += ["## Evaluation", "", *metrics(report), ""] if report.metrics else []
    body += ["## Use", "", "```python", USAGE[kind].format(path=path.resolve()), "```", ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body))
