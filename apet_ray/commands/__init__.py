"""One module per ``apet-ray`` subcommand; each exposes ``register(subparsers)``."""
