"""Bad user input: exit code 2, one line on stderr, no traceback (unless --debug).

Each module raises its own subclass (ConfigError, DataError, ModelError, MethodError,
OutputDirError) with a message naming the file, line or field. This module imports nothing, so the
CLI can tell bad input from a failure without loading torch.
"""


class InputError(ValueError):
    """Base of every error that means the user's input is wrong (not the program)."""


INPUT_ERRORS = (InputError, FileNotFoundError)


def hub_error(name: str, exc: Exception, offline: bool, known: str = "") -> str:
    """The one line for a hub id (a model or a data set) that could not be loaded: not in the local
    cache while offline, or the first line of why."""
    if offline:
        return f"{name}: {known}not in the local Hugging Face cache and HF_HUB_OFFLINE=1 (no download attempted)"
    return f"{name}: {known}could not load ({str(exc).splitlines()[0]})"
