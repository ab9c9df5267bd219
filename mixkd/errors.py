"""Errors that mean "the user asked for something we cannot do" (exit code 2 on the CLI)."""


class UsageError(Exception):
    """Bad input: config value, data file, model path, output dir.

    The message is one line that names the bad value and the fix; the CLI prints it as
    ``mixkd: error: <message>`` and exits with code 2, without a traceback.
    """


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or inf during training; names the step and the term."""

    def __init__(self, step: int, term: str, value: float):
        self.step, self.term, self.value = step, term, value
        super().__init__(
            f"loss term '{term}' is {value} at step {step}; lower --lr, check the data, "
            f"or resume from the last checkpoint with --resume"
        )
