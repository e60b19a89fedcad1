"""One exception for mistakes a user can fix.

Anything raised as ``UserError`` is printed by the CLI and the experiment scripts as a
single line (no traceback) and exits non-zero. Raise it for bad input -- unknown names,
impossible budgets, missing files or columns, corrupt checkpoints -- never for bugs.
"""

import argparse


class UserError(ValueError):
    """A problem with the user's input, reported as one line."""

    exit_code = 2


class Interrupted(UserError):
    """A study stopped before every trial was recorded (Ctrl-C, SIGTERM): one line that says
    how to go on, and the shell's exit code for an interrupt."""

    exit_code = 130


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose mistakes read like ``UserError``: one line and a pointer to
    ``--help``, not the whole usage block first."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")
