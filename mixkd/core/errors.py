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

    def __reduce__(self):   # picklable with its fields (Ray ships it from the trial to the driver)
        return (type(self), (self.step, self.term, self.value))

    def record(self) -> dict:
        """What a sweep trial writes to ``failed.json`` (so a retry fails at once instead of retraining)."""
        return {"error": type(self).__name__, "step": self.step, "term": self.term, "value": str(self.value),
                "reason": f"loss term '{self.term}' is {self.value} at step {self.step}; not retried (it would "
                          f"recur from the same checkpoint): lower the lr range or check the data"}

    @classmethod
    def from_record(cls, rec: dict) -> "NonFiniteLossError":
        return cls(int(rec["step"]), str(rec["term"]), float(rec["value"]))


class SweepFailed(RuntimeError):
    """A sweep step failed for a reason that is not bad input (a teacher that crashed more often than
    ``max_failures`` allows, ...). The CLI prints it as one line with exit code 1; ``--resume`` continues."""
