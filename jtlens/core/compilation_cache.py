"""XLA's persistent compilation cache under jtlens's cache folder, and prompt-length buckets.

A new Python process compiles every program again; with the cache on, a program compiled once
(same shapes, same model config, same jax version) is read back from disk instead. The CLI turns
it on by default; library users opt in:

    jtlens.enable_compilation_cache()        # under $JTLENS_CACHE/xla (default ~/.cache/jtlens)

Shapes key the cache, so the report pads a prompt to `bucket(n)` positions: texts of similar
length share one compiled program.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import jax

# Every program: the report's many small eager ops add up (measured: 68 programs, 2.6 s of
# compiling left with a 0.2 s threshold, 0.4 s with none).
MIN_COMPILE_SECONDS = 0.0


def cache_root() -> Path:
    """jtlens's cache folder: $JTLENS_CACHE, default ~/.cache/jtlens."""
    return Path(os.environ.get("JTLENS_CACHE") or Path.home() / ".cache" / "jtlens").expanduser()


def enable_compilation_cache(path: Optional[os.PathLike] = None) -> Path:
    """Keep compiled XLA programs on disk (default `cache_root() / "xla"`) so later processes
    reuse them. Returns the folder. Safe to call more than once."""
    folder = Path(path) if path is not None else cache_root() / "xla"
    folder.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder


def bucket(n: int, limit: Optional[int] = None) -> int:
    """The padded length for `n` positions: the next multiple of 16, and past 64 of the power of
    two an eighth of the next power of two above n (so at most 25% padding, and a few buckets
    per doubling), capped at `limit` (the context) when given."""
    step = 16 if n <= 64 else 2 ** ((n - 1).bit_length() - 3)
    padded = -(-n // step) * step
    return padded if limit is None else max(n, min(padded, limit))
