"""Bad user input: exit code 2, one line on stderr, no traceback (unless --debug).

Each module raises its own subclass (ConfigError, DataError, ModelError, MethodError,
OutputDirError) with a message naming the file, line or field. This module imports nothing, so the
CLI can tell bad input from a failure without loading torch.
"""


class InputError(ValueError):
    """Base of every error that means the user's input is wrong (not the program)."""


INPUT_ERRORS = (InputError, FileNotFoundError)
