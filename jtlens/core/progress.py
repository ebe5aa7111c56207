"""When to show progress: on a terminal or in a notebook, never in a pipe, a log or under pytest."""

from __future__ import annotations

import sys


def shown(progress: bool = True) -> bool:
    """`progress`, unless nobody watches (stderr is not a terminal and no notebook runs)."""
    return bool(progress) and (sys.stderr.isatty() or "ipykernel" in sys.modules)
