"""Errors that mean bad user input (exit code 2, one line, no traceback)."""
from unlearn.config import ConfigError
from unlearn.data.sources import DataError
from unlearn.models.loading import ModelError
from unlearn.objectives.methods import MethodError
from unlearn.run import OutputDirError

INPUT_ERRORS = (ConfigError, DataError, ModelError, MethodError, OutputDirError, FileNotFoundError)
