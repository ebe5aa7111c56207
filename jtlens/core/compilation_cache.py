"""XLA's persistent compilation cache under jtlens's cache folder, and prompt-length buckets.

A new Python process compiles every program again; with the cache on, a program compiled once
(same shapes, same model config, same jax version) is read back from disk instead. The CLI turns
it on by default; library users opt in:

    jtlens.enable_compilation_cache()        # under $JTLENS_CACHE/xla (default ~/.cache/jtlens)

Shapes key the cache, so the report pads a prompt to `bucket(n)` positions: texts of similar
length share one compiled program. The programs a notebook compiles for each new prompt shape
(the model's forward, with a cache, with a key/value cache, generation) are `quick_jit`s: XLA
compiles them with `quick_compile_options()`.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Optional

import jax

# Every program: the report's many small eager ops add up (measured: 68 programs, 2.6 s of
# compiling left with a 0.2 s threshold, 0.4 s with none).
MIN_COMPILE_SECONDS = 0.0


# XLA:CPU writes each fusion's kernel with its MLIR fusion emitters by default; its older emitters
# compile the same program 20-30% sooner and it runs as fast (SmolLM2, 2 cores: the forward
# 0.28 -> 0.23 s, with every activation captured 0.51 -> 0.38 s; run times equal at 1x11, 8x128
# and 2x1024 tokens), with outputs equal within float rounding. Only for the programs compiled
# per prompt shape: a gradient of the forward ran 7% slower with them, so training, sweeps and
# attribution keep XLA's default.
_QUICK = {"xla_cpu_use_fusion_emitters": False}


def known_compiler_options(options: dict) -> dict:
    """`options` for `jax.jit(compiler_options=...)` where this jax and XLA accept them, else {}
    (probed once per set on the default backend; other backends ignore `xla_cpu_*` ones)."""
    return dict(_accepted(tuple(sorted(options.items()))))


@functools.lru_cache(maxsize=None)
def _accepted(options: tuple) -> tuple:
    try:
        jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(1.0).compile()
    except Exception:  # an older jax (no compiler_options) or an XLA without an option
        return ()
    return options


def quick_compile_options() -> dict:
    """`compiler_options` that make XLA compile sooner at the same run time ({} where unknown)."""
    return known_compiler_options(_QUICK)


class quick_jit:
    """`jax.jit(fn, **kwargs)` compiled with `quick_compile_options()`. The jitted function is
    made on the first call (or attribute read: `lower`, `trace`, ...), as the options are probed
    on the backend, which importing jtlens must not start."""

    def __init__(self, fn, **kwargs):
        self._fn, self._kwargs = fn, kwargs
        functools.update_wrapper(self, fn)

    @functools.cached_property
    def jitted(self):
        return jax.jit(self._fn, compiler_options=quick_compile_options() or None, **self._kwargs)

    def __call__(self, *args, **kwargs):
        return self.jitted(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.jitted, name)


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
