"""Arrays across the torch face's boundary: JAX -> torch on the way out, torch -> JAX on the way in.

Both go through DLPack, so on CPU (and on a GPU both libraries share) nothing is copied: a torch
tensor returned by the face shares memory with jtlens's JAX array, as a TransformerLens tensor is
the model's own. `TorchView` wraps any jtlens object (the model, a cache, a FactoredMatrix, module
views) so its attributes, methods and operators answer in torch tensors and accept them.
"""

from __future__ import annotations

import collections.abc
import functools
import inspect
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import torch

from jtlens.core.cache import ActivationCache as JaxActivationCache
from jtlens.core.factored_matrix import FactoredMatrix as JaxFactoredMatrix
from jtlens.tl.module_views import LayerViews, ModuleView


def tensor(x: jax.Array) -> torch.Tensor:
    """A JAX array as a torch tensor (shared memory); integer ids become int64 as in torch."""
    t = torch.from_dlpack(x)
    integer = not (t.is_floating_point() or t.is_complex()) and t.dtype not in (torch.bool, torch.long)
    return t.long() if integer else t


def array(t: torch.Tensor) -> jax.Array:
    """A torch tensor as a JAX array (shared memory where dtype and layout allow)."""
    t = t.detach().resolve_conj().resolve_neg().contiguous()
    if t.dtype == torch.float64 and not jax.config.jax_enable_x64:
        t = t.float()  # JAX's default precision, as jnp.asarray(float64 array) gives
    return jnp.from_dlpack(t)


def to_torch(x: Any) -> Any:
    """JAX arrays in `x` (nested tuples, lists, dicts) as torch tensors; jtlens objects that hold
    arrays wrapped so they answer in torch."""
    if isinstance(x, jax.Array):
        return tensor(x)
    if isinstance(x, np.ndarray) and x.dtype.kind in "fiub":
        return torch.from_numpy(np.array(x))
    items = _each(x, to_torch)
    if items is not _LEAF:
        return items
    if isinstance(x, collections.abc.Iterator):  # generators, and iter(dict.items()) alike
        return (to_torch(v) for v in x)
    for jax_type, face in _FACES.items():
        if isinstance(x, jax_type):
            return face.wrap(x)
    return x


def to_jax(x: Any) -> Any:
    """torch tensors in `x` (nested tuples, lists, dicts) as JAX arrays; wrapped objects
    unwrapped."""
    if isinstance(x, torch.Tensor):
        return array(x)
    if isinstance(x, TorchView):
        return x._inner
    items = _each(x, to_jax)
    return x if items is _LEAF else items


_LEAF = object()


def _each(x: Any, f: Callable) -> Any:
    """`f` over the items of a tuple (named ones keep their type), list or plain dict; `_LEAF`
    for anything else."""
    if isinstance(x, tuple):
        items = [f(v) for v in x]
        return type(x)(*items) if hasattr(x, "_fields") else tuple(items)
    if isinstance(x, list):
        return [f(v) for v in x]
    if type(x) is dict:
        return {k: f(v) for k, v in x.items()}
    return _LEAF


def torch_function(f: Callable, owner: Any = None) -> Callable:
    """`f` taking and returning torch tensors (`owner`: the wrapper `f` returning its wrapped
    object stands for, e.g. `model.to("cpu")` returns the model)."""
    @functools.wraps(f)
    def run(*args, **kwargs):
        out = f(*to_jax(args), **to_jax(kwargs))
        return owner if owner is not None and out is owner._inner else to_torch(out)

    return run


class TorchView:
    """A jtlens object whose attributes, methods, items and operators answer in torch tensors."""

    __array_ufunc__ = None  # numpy_array @ view defers to the view

    @classmethod
    def wrap(cls, inner: Any) -> "TorchView":
        view = cls.__new__(cls)
        object.__setattr__(view, "_inner", inner)
        return view

    def __getattr__(self, name: str) -> Any:
        if name == "_inner":  # not set yet (e.g. while unpickling)
            raise AttributeError(name)
        value = getattr(self._inner, name)
        if inspect.ismethod(value) or inspect.isfunction(value):
            return torch_function(value, self)
        return to_torch(value)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._inner, name, to_jax(value))

    def __dir__(self):
        return sorted(set(dir(type(self))) | set(dir(self._inner)))

    def __call__(self, *args, **kwargs):
        return torch_function(self._inner, self)(*args, **kwargs)

    def __getitem__(self, key):
        return to_torch(self._inner[to_jax(key)])

    def __contains__(self, key) -> bool:
        return to_jax(key) in self._inner

    def __iter__(self):
        return (to_torch(v) for v in self._inner)

    def __len__(self) -> int:
        return len(self._inner)

    def __bool__(self) -> bool:
        return True

    def __matmul__(self, other):
        return to_torch(self._inner @ to_jax(other))

    def __rmatmul__(self, other):
        return to_torch(to_jax(other) @ self._inner)

    def __mul__(self, other):
        return to_torch(self._inner * to_jax(other))

    __rmul__ = __mul__

    def __repr__(self) -> str:
        return repr(self._inner)


class ActivationCache(TorchView):
    """jtlens's ActivationCache answering in torch tensors: `cache["pattern", 0]`,
    `cache.accumulated_resid(...)`, `cache.stack_head_results(...)`, ..."""


class FactoredMatrix(TorchView):
    """TransformerLens's FactoredMatrix over torch tensors: `FactoredMatrix(A, B)`, `.AB`, `.svd()`,
    `.eigenvalues`, `@`, indexing (jtlens's FactoredMatrix inside)."""

    def __init__(self, A, B):
        object.__setattr__(self, "_inner", JaxFactoredMatrix(to_jax(A), to_jax(B)))


_FACES = {JaxActivationCache: ActivationCache, JaxFactoredMatrix: FactoredMatrix,
          ModuleView: TorchView, LayerViews: TorchView}


def torch_functions(module, names, as_is=()) -> dict:
    """`module`'s functions `names` taking and returning torch tensors (those in `as_is`
    unchanged): the body of a torch-facing copy of a jtlens module."""
    return {n: getattr(module, n) if n in as_is else torch_function(getattr(module, n)) for n in names}
