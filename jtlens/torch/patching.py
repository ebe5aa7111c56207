"""`jtlens.patching`'s TransformerLens functions (`get_act_patch_*`, `generic_activation_patch`)
for the torch face: a torch model, tokens and cache in, a torch tensor out, and a torch metric.

The sweep runs each chunk of patches as one compiled program. A torch metric written in plain
tensor code (indexing, arithmetic, `log_softmax`, `gather`, `mean`, ...: `traced_metric.RULES`)
is traced into it, as a jnp metric is. Any other metric is evaluated eagerly: the chunk's
patched logits come back to Python and the metric runs once per patch on torch tensors; the call
then warns, naming the operation that could not be traced.
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
from jtlens.torch.traced_metric import TracedMetric


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


def traceable(metric: Callable, model, tokens) -> Callable:
    """`metric` as the sweep runs it: traced (`TracedMetric`) when every operation it uses has a
    jax.numpy rule, else an `EagerMetric`, with a warning that names the operation."""
    if _uses_jax(metric):
        return metric
    logits = jax.ShapeDtypeStruct((*np.shape(tokens)[-2:], model.cfg.d_vocab_out), jnp.float32)
    try:
        if jax.eval_shape(TracedMetric(metric), logits).shape == ():
            return TracedMetric(metric)
        reason = "it does not return a scalar"
    except Exception as err:  # noqa: BLE001 - any failure to trace means: run it eagerly
        reason = f"{type(err).__name__}: {err}"
    warnings.warn(f"the torch metric is evaluated eagerly, once per patch on each chunk of patched "
                  f"logits, because it could not be traced into the sweep ({reason}); plain "
                  f"tensor code (indexing, arithmetic, log_softmax, gather, mean, ...) is traced",
                  stacklevel=3)
    return EagerMetric(metric)


def _torch_sweep(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def sweep(model, corrupted_tokens, clean_cache, patching_metric, *args, **kwargs):
        model = to_jax(model)
        tokens = _patching.corrupted_tokens(model, to_jax(corrupted_tokens))
        metric = traceable(patching_metric, model, tokens)
        out = fn(model, tokens, to_jax(clean_cache), metric, *to_jax(args), **to_jax(kwargs))
        return to_torch(out)

    return sweep


__all__ = [n for n in dir(_patching) if n.startswith("get_act_patch_")] + ["generic_activation_patch"]
globals().update({name: _torch_sweep(getattr(_patching, name)) for name in __all__})
