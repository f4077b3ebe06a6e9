"""The neural verbs of the ``trirender`` console script (train, eval, novel), registered by cli.py."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the neural verbs to ``app``."""
