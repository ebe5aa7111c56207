"""A torch metric written in plain tensor code, traced into JAX: the sweep compiles it with the
patched forward instead of calling back to Python per patch.

`TracedMetric(metric)(logits)` hands `metric` a `JaxBacked` tensor: a torch tensor subclass that
holds a JAX value and answers the torch operations in `RULES` with their jax.numpy equivalents.
Any other operation raises `Untraceable` (the sweep then evaluates the metric eagerly).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import torch

from jtlens.torch.convert import array


class Untraceable(RuntimeError):
    """The metric uses a torch operation with no jax.numpy rule here."""


def _axis(kwargs: dict, args: tuple, at: int = 0):
    return kwargs.pop("dim", args[at] if len(args) > at else None)


def _reduce(f: Callable) -> Callable:
    def rule(x, *args, **kwargs):
        return f(x, axis=_axis(kwargs, args), keepdims=kwargs.pop("keepdim", False))
    return rule


def _max(x, *args, **kwargs):
    axis = _axis(kwargs, args)
    if axis is None:
        return jnp.max(x)
    raise Untraceable("max(dim=...) returns (values, indices); use amax")


def _swap(f: Callable) -> Callable:
    return lambda x, y: f(y, x)


def _along(f: Callable) -> Callable:
    return lambda x, *a, **k: f(x, axis=_axis(k, a))


# torch operation name (a Tensor method's or a torch function's) -> its jax.numpy form.
RULES: dict = {
    "__getitem__": lambda x, key: x[key],
    "add": jnp.add, "__add__": jnp.add, "__radd__": _swap(jnp.add),
    "sub": jnp.subtract, "__sub__": jnp.subtract, "__rsub__": _swap(jnp.subtract),
    "mul": jnp.multiply, "__mul__": jnp.multiply, "__rmul__": _swap(jnp.multiply),
    "div": jnp.divide, "__truediv__": jnp.divide, "__rtruediv__": _swap(jnp.divide),
    "neg": jnp.negative, "__neg__": jnp.negative, "pow": jnp.power, "__pow__": jnp.power,
    "matmul": jnp.matmul, "__matmul__": jnp.matmul,
    "mean": _reduce(jnp.mean), "sum": _reduce(jnp.sum), "amax": _reduce(jnp.max), "max": _max,
    "abs": jnp.abs, "exp": jnp.exp, "log": jnp.log,
    "log_softmax": _along(jax.nn.log_softmax), "softmax": _along(jax.nn.softmax),
    "gather": lambda x, dim, index: jnp.take_along_axis(x, index, axis=dim),
    "squeeze": _along(jnp.squeeze), "unsqueeze": lambda x, *a, **k: jnp.expand_dims(x, _axis(k, a)),
    "detach": lambda x: x, "clone": lambda x: x, "float": lambda x: x.astype(jnp.float32),
}
_PROPERTIES = {torch.Tensor.shape.__get__: lambda x: torch.Size(x.shape),
               torch.Tensor.ndim.__get__: lambda x: x.ndim,
               torch.Tensor.dtype.__get__: lambda x: torch.float32}


def _unwrap(x):
    if isinstance(x, JaxBacked):
        return x.value
    if isinstance(x, torch.Tensor):
        return array(x)
    if isinstance(x, (tuple, list)):
        return type(x)(_unwrap(v) for v in x)
    return x


class JaxBacked(torch.Tensor):
    """A torch tensor standing for a JAX value (`.value`); see `RULES`."""

    @staticmethod
    def __new__(cls, value: jax.Array):
        t = torch.Tensor._make_subclass(cls, torch.empty(value.shape, device="meta"))
        t.__dict__["value"] = value
        return t

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in _PROPERTIES:
            return _PROPERTIES[func](args[0].value)
        rule = RULES.get(getattr(func, "__name__", None))
        if rule is None:
            raise Untraceable(f"torch's {getattr(func, '__qualname__', func)} has no jax.numpy rule")
        out = rule(*_unwrap(args), **{k: _unwrap(v) for k, v in (kwargs or {}).items()})
        return JaxBacked(out) if isinstance(out, jax.Array) else out


@dataclasses.dataclass(frozen=True)
class TracedMetric:
    """A torch metric run on `JaxBacked` tensors, so it traces into the sweep. Hashable by the
    metric (the sweep compiles once per metric)."""

    metric: Callable

    def __call__(self, logits: jax.Array) -> jax.Array:
        out = self.metric(JaxBacked(logits))
        if not isinstance(out, JaxBacked):
            raise Untraceable(f"the metric returned a {type(out).__name__}, not a tensor")
        return out.value
