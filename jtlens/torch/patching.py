"""`jtlens.patching`'s TransformerLens functions (`get_act_patch_*`, `generic_activation_patch`)
for the torch face: a torch model, tokens and cache in, a torch tensor out, and a torch metric.

The sweep runs each chunk of patches as one compiled program. A JAX metric is traced into it;
a torch metric cannot be, so it is evaluated eagerly: the chunk's patched logits come back to
Python and the metric runs once per patch on torch tensors. Each call warns which it did.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import warnings
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import torch

from jtlens.tl import patching as _patching
from jtlens.torch.convert import to_jax, to_torch


@dataclasses.dataclass(frozen=True)
class EagerMetric:
    """A torch metric called back from the compiled sweep, once per patch of each chunk.
    Hashable by the metric, so the sweep compiles once per metric."""

    metric: Callable

    def __call__(self, logits: jax.Array) -> jax.Array:
        return jax.pure_callback(self._host, jax.ShapeDtypeStruct((), jnp.float32), logits,
                                 vmap_method="expand_dims")

    def _host(self, logits: np.ndarray) -> np.ndarray:
        # With `expand_dims`, a chunk arrives as [*patch axes, batch, pos, d_vocab].
        flat = np.asarray(logits).reshape(-1, *np.shape(logits)[-3:])
        values = [float(self.metric(torch.from_numpy(np.array(one)))) for one in flat]
        return np.asarray(values, np.float32).reshape(np.shape(logits)[:-3])


def _uses_jax(metric: Callable) -> bool:
    """Whether `metric` is written for JAX arrays (jtlens.torch.patching also takes those)."""
    module = inspect.getmodule(metric)
    names = getattr(getattr(metric, "__code__", None), "co_names", ())
    return "jnp" in names or "jax" in names or (module is not None and module.__name__.startswith("jax"))


def _torch_sweep(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def sweep(model, corrupted_tokens, clean_cache, patching_metric, *args, **kwargs):
        if _uses_jax(patching_metric):
            metric = patching_metric
        else:
            metric = EagerMetric(patching_metric)
            warnings.warn(f"{fn.__name__}: the torch metric is evaluated eagerly, once per patch on "
                          f"each chunk of patched logits (a JAX metric, jnp code, is traced into "
                          f"the compiled sweep instead)", stacklevel=2)
        out = fn(to_jax(model), to_jax(corrupted_tokens), to_jax(clean_cache), metric,
                 *to_jax(args), **to_jax(kwargs))
        return to_torch(out)

    return sweep


__all__ = [n for n in dir(_patching) if n.startswith("get_act_patch_")] + ["generic_activation_patch"]
globals().update({name: _torch_sweep(getattr(_patching, name)) for name in __all__})
