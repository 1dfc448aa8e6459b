"""Errors a user of the jobs can act on. Each names what is wrong and where."""
from __future__ import annotations

from dataclasses import dataclass, field


class PsrqError(Exception):
    """Base class: jobs print these without a traceback and exit non-zero."""


class ConfigError(PsrqError):
    """A configuration key is missing, unknown or has a bad value."""


class QuantizerError(PsrqError):
    """A quantizer cannot be fitted or applied as asked (K > sample, bad input, ...)."""


class ArtifactError(PsrqError):
    """A codebook artifact is missing, corrupt, or does not match the data."""


class TrainingError(PsrqError):
    """Training cannot go on (a NaN loss, a checkpoint that does not fit the model)."""


class StorageError(PsrqError):
    """A table is missing, corrupt, or an operation on it is not allowed."""


@dataclass
class Problem:
    """One failed check on one column of one table."""

    column: str  # "*" for the table as a whole
    message: str
    n_rows: int = 0
    examples: list = field(default_factory=list)

    def describe(self) -> str:
        rows = f"{self.n_rows:,} row(s) " if self.n_rows else ""
        ex = f" (e.g. {', '.join(map(str, self.examples))})" if self.examples else ""
        where = "" if self.column == "*" else f"column '{self.column}': "
        return f"{where}{rows}{self.message}{ex}"


class InputValidationError(PsrqError):
    """Input data broke its contract; nothing was written."""

    def __init__(self, table: str, problems: list[Problem]):
        self.table = table
        self.problems = problems
        lines = "\n".join(f"  - {p.describe()}" for p in problems)
        super().__init__(f"table '{table}' failed validation ({len(problems)} problem(s)); nothing was written:\n{lines}")


# what the operating system says when storage refuses a write: named in one line, exit 2
OS_WRITE_ERRORS = ("File too large", "No space left on device", "Disk quota exceeded", "Read-only file system",
                   "Permission denied")


def storage_refusal(exc: BaseException | None) -> str | None:
    """One line for an exception that is storage refusing a write (a full disk, a file-size
    limit, permissions), wherever it was raised (here, on an executor, in the JVM); None
    for anything else. Names the file when the error does."""
    import re

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.strerror in OS_WRITE_ERRORS:
            return f"{exc.strerror}: {exc.filename or 'a file the job was writing'}"
        text = str(exc)
        reason = next((r for r in OS_WRITE_ERRORS if r in text), None)
        if reason:
            at = text.find(reason)
            path = r"(?:[a-z0-9]+://|/)[^\s'\"():,]+"  # after the reason (Python's form), else just before it
            found = re.search(path, text[at:at + 400]) or next(reversed(list(re.finditer(path, text[max(0, at - 400):at]))), None)
            return f"{reason}: {found.group(0) if found else 'a file the job was writing'}"
        exc = exc.__cause__ or exc.__context__
    return None
