"""One exception for mistakes a user can fix.

Anything raised as ``UserError`` is printed by the CLI and the experiment scripts as a
single line (no traceback) and exits non-zero. Raise it for bad input -- unknown names,
impossible budgets, missing files or columns, corrupt checkpoints -- never for bugs.
"""

import argparse
import errno


class UserError(ValueError):
    """A problem with the user's input, reported as one line."""

    exit_code = 2


class Interrupted(UserError):
    """A study stopped before every trial was recorded (Ctrl-C, SIGTERM): one line that says
    how to go on, and the shell's exit code for an interrupt."""

    exit_code = 130


class OutputError(UserError):
    """The disk or the folder refused an output after the run started (full, read-only, no
    permission): one line naming the path and the errno; the writer left nothing half-written,
    so the same command with ``--resume`` goes on once the cause is fixed. Exit code 1: not a
    mistake in the input (2), a machine that stopped the run."""

    exit_code = 1

    def __init__(self, path, error: OSError, hint: str = ""):
        self.path, self.error, self.hint = str(path), error, hint
        super().__init__(f"cannot write {self.path}: {describe(error)}{'; ' + hint if hint else ''}")

    def with_hint(self, hint: str) -> "OutputError":
        """The same failure, with what to do next (the command knows; the writer does not)."""
        return OutputError(self.path, self.error, hint)


# errnos that say the machine refused (a full or read-only disk, permissions, a dead mount),
# not that the code is wrong: shown as one line wherever they surface
MACHINE_ERRNOS = frozenset(getattr(errno, name) for name in (
    "ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "EIO", "EFBIG", "ELOOP", "ENAMETOOLONG", "ESTALE", "EMFILE",
    "ENFILE") if hasattr(errno, name))


def describe(error: OSError) -> str:
    """``No space left on device (ENOSPC)``: the reason and the errno's name."""
    name = errno.errorcode.get(error.errno, str(error.errno)) if error.errno is not None else ""
    reason = error.strerror or str(error) or type(error).__name__
    return f"{reason} ({name})" if name else reason


def machine_error(exc: BaseException) -> OSError | None:
    """The OSError of the machine refusing (``MACHINE_ERRNOS``) behind ``exc`` (itself, its
    cause or context), or None: a top-level handler prints it as one line."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in MACHINE_ERRNOS:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def machine_error_line(error: OSError) -> str:
    """One line for an OSError no writer caught: the path(s) it names and the errno."""
    where = " -> ".join(str(f) for f in (error.filename, error.filename2) if f is not None)
    return f"{where + ': ' if where else ''}{describe(error)}"


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose mistakes read like ``UserError``: one line and a pointer to
    ``--help``, not the whole usage block first."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")
