"""One exception for mistakes a user can fix.

Anything raised as ``UserError`` is printed by the CLI and the experiment scripts as a
single line (no traceback) and exits non-zero. Raise it for bad input -- unknown names,
impossible budgets, missing files or columns, corrupt checkpoints -- never for bugs.
"""

import argparse


class UserError(ValueError):
    """A problem with the user's input, reported as one line."""


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose mistakes read like ``UserError``: one line and a pointer to
    ``--help``, not the whole usage block first."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")
