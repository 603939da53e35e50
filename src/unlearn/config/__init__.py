"""Every typed config section, torch-free: base.py (the strict base model, errors, one data source),
eval.py (`eval:`), select.py (`select:`), run.py (the run config and its loading: YAML, `--set`
overrides, paths relative to the file)."""
from unlearn.config.base import ConfigError, SourceConfig, Strict, format_validation_error, path_fields
from unlearn.config.eval import EvalConfig, parse_eval_config
from unlearn.config.run import (CompareMethod, DataConfig, LoraConfig, MethodConfig, ModelConfig, OnPolicyConfig,
                                OutputConfig, RunConfig, TrainConfig, apply_overrides, dump_config, load_config)
from unlearn.config.select import SelectConfig

__all__ = ["CompareMethod", "ConfigError", "DataConfig", "EvalConfig", "LoraConfig", "MethodConfig", "ModelConfig",
           "OnPolicyConfig", "OutputConfig", "RunConfig", "SelectConfig", "SourceConfig", "Strict", "TrainConfig",
           "apply_overrides", "dump_config", "format_validation_error", "load_config", "parse_eval_config",
           "path_fields"]
