"""Results that depend on a model but not on the text, kept on disk between processes.

A report's induction heads come from random tokens said twice, the same for every text: a second
`jtlens run` of the same model reads them back instead of running the model on them again
(0.4 s of SmolLM2's 2 s). The key is everything the result depends on: the params' contents
(`params_fingerprint`), the Config, what the caller passes (the probe's settings), jtlens's source
files and the jax version and platform, so any change there computes afresh.

    facts = remembered(("induction", 20, 4), model.cfg, model.params, compute)  # dict of arrays
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
import zipfile
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jtlens.core.compilation_cache import cache_root

_PACKAGE = Path(__file__).resolve().parents[1]


@jax.jit
def _digest(leaves):
    """[2] float32 summaries of every element of every leaf: each leaf's rows of 1024 weighted
    along the row, then all rows weighted by their place (so a moved value counts too), and the
    sum of the rows' magnitudes. One pass over the params (SmolLM2: 0.02 s; compiled, 0.1 s)."""
    rows = []
    for leaf in leaves:
        x = leaf.astype(jnp.float32).reshape(-1)
        width = 1024 if x.shape[0] % 1024 == 0 else x.shape[0]
        rows.append(x.reshape(-1, width) @ (1.0 + 1e-3 * jnp.arange(width, dtype=jnp.float32)))
    rows = jnp.concatenate(rows)
    place = 1.0 + 1e-6 * jnp.arange(rows.shape[0], dtype=jnp.float32)
    return jnp.stack([rows @ place, jnp.abs(rows).sum()])


def params_fingerprint(params) -> str:
    """A hex digest of a params pytree: its paths, shapes, dtypes and a summary of every value
    (hashing the bytes of 650 MB would take seconds; the summaries change with any edit larger
    than float32 rounding of the sums)."""
    paths_leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    h = hashlib.sha256()
    for path, leaf in paths_leaves:
        h.update(f"{jax.tree_util.keystr(path)}:{tuple(leaf.shape)}:{leaf.dtype};".encode())
    h.update(np.asarray(_digest([leaf for _, leaf in paths_leaves])).tobytes())
    return h.hexdigest()


def code_digest() -> str:
    """jtlens's source files (names, sizes, modification times) and the jax version and platform:
    what a remembered result was computed with."""
    h = hashlib.sha256(f"{jax.__version__}:{jax.default_backend()}".encode())
    for path in sorted(_PACKAGE.rglob("*.py")):
        stat = path.stat()
        h.update(f"{path.relative_to(_PACKAGE)}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return h.hexdigest()


def remembered(what: tuple, cfg, params, compute: Callable[[], dict]) -> dict:
    """`compute()` (-> a dict of numpy arrays), or its result from an earlier process with the
    same `what` (json-able: the computation's name and settings), cfg, params and jtlens code,
    under `cache_root() / "remembered"`."""
    key = hashlib.sha256(json.dumps([list(what), repr(cfg), params_fingerprint(params),
                                     code_digest()]).encode()).hexdigest()[:32]
    path = cache_root() / "remembered" / f"{what[0]}-{key}.npz"
    try:
        with np.load(path, allow_pickle=False) as saved:
            return {name: saved[name] for name in saved.files}
    except (FileNotFoundError, NotADirectoryError):  # (the write below says why, if it fails)
        pass
    except (OSError, ValueError, zipfile.BadZipFile) as err:  # unreadable: computed again below
        warnings.warn(f"{path} cannot be read ({err}); computing it again", stacklevel=2)
    result = compute()
    partial = path.with_suffix(f".{os.getpid()}.partial.npz")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(partial, **{name: np.asarray(value) for name, value in result.items()})
        os.replace(partial, path)  # whole or absent, also with another process on the same key
    except OSError as err:  # a read-only or full cache folder costs the next run, not this one
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        warnings.warn(f"cannot keep {what[0]} under {path.parent} ({err}); the next process "
                      f"computes it again", stacklevel=2)
    return result
