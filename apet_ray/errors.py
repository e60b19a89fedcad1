"""One exception for mistakes a user can fix.

Anything raised as ``UserError`` is printed by the CLI and the experiment scripts as a
single line (no traceback) and exits non-zero. Raise it for bad input -- unknown names,
impossible budgets, missing files or columns, corrupt checkpoints -- never for bugs.
"""


class UserError(ValueError):
    """A problem with the user's input, reported as one line."""
