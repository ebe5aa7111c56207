"""ActivationCache: stacked activations that answer TransformerLens's keys as views.

Per-layer activations are kept as one array per hook template with a leading layer axis
(`[n_layers, batch, ...]`), which is what `lax.scan` produces and what analyses stack anyway.
`cache["blocks.3.attn.hook_z"]`, `cache["z", 3]` and `cache["blocks.*.attn.hook_z"]` are views.
The cache is a pytree: it passes through `jit`, `vmap` and `jax.device_get`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jtlens.core.cache_analysis import CacheAnalysis
from jtlens.core.compilation_cache import quick_jit
from jtlens.core.config import Config
from jtlens.core.hooks import ALL_LAYERS, HookNames, split_name
from jtlens.core.slice import Slice, check_in_bounds


class BatchDimError(ValueError, AssertionError):
    """remove_batch_dim on a batch larger than 1 (TransformerLens asserts)."""


@functools.partial(jax.tree_util.register_dataclass, data_fields=("stacked", "outer", "params"),
                   meta_fields=("cfg", "names", "layers", "has_batch_dim", "tokenizer"))
@dataclasses.dataclass(eq=False)
class ActivationCache(CacheAnalysis):
    """Activations of one forward, keyed by TransformerLens hook names.

    Attributes:
      stacked: template -> [n_captured_layers, ...] for per-layer hooks.
      outer: full name -> array for hooks outside the blocks (hook_embed, ln_final.*, ...).
      params: the weights analyses read (W_U, W_O, ...), attached by `model.run_with_cache` or
        `with_model`; None for a bare `forward_with_cache` result.
      cfg: the model's Config. names: its `HookNames` (what keys resolve against).
      layers: ((template, the layers held in `stacked[template]`), ...), in order.
      has_batch_dim: False after `remove_batch_dim()`.
      tokenizer: for analyses given tokens as strings; not part of the pytree's data.
    """

    stacked: dict
    outer: dict
    cfg: Config
    names: HookNames
    layers: tuple = ()
    has_batch_dim: bool = True
    params: Optional[dict] = None
    tokenizer: Any = None

    @classmethod
    def from_forward(cls, cfg: Config, names: HookNames, captured: dict, outer: dict, ys: dict,
                     first_layer: int = 0):
        """Assemble from the scan outputs `ys` (template -> [layers run, ...]) of a forward."""
        stacked, layers = {}, []
        for template, arr in ys.items():
            run = range(first_layer, first_layer + arr.shape[0])
            wanted = sorted(l for l in captured[template] if l in run)
            if not wanted:
                continue
            if wanted != list(run):
                arr = arr[jnp.asarray([l - first_layer for l in wanted])]
            stacked[template] = arr
            layers.append((template, tuple(wanted)))
        return cls(stacked, {k: v for k, v in outer.items() if k in captured}, cfg, names,
                   tuple(layers))

    def _held(self, template: str) -> tuple:
        return dict(self.layers).get(template, ())

    # ------------------------------------------------------------------ dict-like access
    def keys(self) -> list[str]:
        """Concrete hook names held, in execution order."""
        present = set(self.outer) | {f"blocks.{l}.{t}" for t, ls in self.layers for l in ls}
        return [n for n in self.names.names(optional=True) if n in present]

    def __getitem__(self, key) -> jax.Array:
        if isinstance(key, str) and key in self.outer:
            return self.outer[key]
        try:
            full = self.names.canonical(key)
        except (TypeError, ValueError):
            raise KeyError(str(self.names.unknown(key))) from None
        template, layer = split_name(full)
        if layer is None:
            if template in self.outer:
                return self.outer[template]
        elif template in self.stacked:
            held = self._held(template)
            if layer == ALL_LAYERS:
                if held == tuple(range(self.cfg.n_layers)):
                    return self.stacked[template]
            elif layer in held:
                return _take(self.stacked[template], held.index(layer), copy=True)
        raise KeyError(f"{full!r} is not in this cache (it holds {len(self)} activations; "
                       f"capture it with names_filter / Hooks(capture=...))")

    def __contains__(self, key) -> bool:
        try:
            self[key]
            return True
        except KeyError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.outer) + sum(len(v) for _, v in self.layers)

    def values(self) -> list[jax.Array]:
        return [self[k] for k in self.keys()]

    def items(self) -> list[tuple[str, jax.Array]]:
        return [(k, self[k]) for k in self.keys()]

    def to_dict(self) -> dict[str, jax.Array]:
        """A flat {hook name: array} dict (per-layer entries are slices of the stacks)."""
        return dict(self.items())

    def __repr__(self) -> str:
        return f"ActivationCache with keys {self.keys()}"

    # ------------------------------------------------------------------ batch
    def remove_batch_dim(self) -> "ActivationCache":
        """Drop a batch axis of size 1 from every entry (in place, returns self, as TransformerLens)."""
        if not self.has_batch_dim:
            return self
        for k, v in self.stacked.items():
            if v.shape[1] != 1:
                raise BatchDimError(f"remove_batch_dim needs batch size 1; {k} has batch {v.shape[1]}")
            self.stacked[k] = _take(v, (slice(None), 0))
        for k, v in self.outer.items():
            if v.shape[0] != 1:
                raise BatchDimError(f"remove_batch_dim needs batch size 1; {k} has batch {v.shape[0]}")
            self.outer[k] = _take(v, 0)
        self.has_batch_dim = False
        return self

    def first_positions(self, n: int) -> "ActivationCache":
        """A new cache of the first `n` positions (query and key positions of attention scores and
        patterns): undoes padding a causal run on the right. Needs the batch axis."""
        if not self.has_batch_dim:
            raise ValueError("first_positions needs the batch axis (call it before remove_batch_dim)")
        stacked, outer = _first_positions(self.stacked, self.outer, n)
        return dataclasses.replace(self, stacked=stacked, outer=outer)

    def apply_slice_to_batch_dim(self, batch_slice) -> "ActivationCache":
        """A new cache with the batch axis indexed by `batch_slice` (an int, slice, index array or
        `utils.Slice`); an int drops the axis."""
        if not self.has_batch_dim:
            raise ValueError("this cache has no batch dimension")
        if isinstance(batch_slice, Slice):
            batch_slice = batch_slice.slice
        some = next(iter(self.outer.values()), None)
        if some is None and self.stacked:
            some = next(iter(self.stacked.values()))[0]
        if some is not None:
            check_in_bounds(batch_slice, some.shape[:1])
        return dataclasses.replace(self, stacked={k: v[:, batch_slice] for k, v in self.stacked.items()},
                                   outer={k: v[batch_slice] for k, v in self.outer.items()},
                                   has_batch_dim=not isinstance(batch_slice, (int, np.integer)))

    def slice_positions(self, pos_slice) -> "ActivationCache":
        """A new cache with `pos_slice` (a Slice or its input; an int keeps the axis) applied to
        every activation's position axis: -3 for q/k/v/z/result (per-head), else -2 (for attention
        scores and patterns, the query position). TransformerLens's run_with_cache(pos_slice=...)."""
        sl = Slice.unwrap(pos_slice)

        def cut(name: str, x, per_entry_ndim: int):
            dim = -3 if name.endswith(("hook_q", "hook_k", "hook_v", "hook_z", "hook_result")) else -2
            return sl.apply(x, dim=x.ndim + dim) if per_entry_ndim >= -dim else x

        return dataclasses.replace(self, stacked={k: cut(k, v, v.ndim - 1) for k, v in self.stacked.items()},
                                   outer={k: cut(k, v, v.ndim) for k, v in self.outer.items()})

    @property
    def cache_dict(self) -> dict[str, jax.Array]:
        """TransformerLens's `cache.cache_dict`: the flat {hook name: array} dict."""
        return self.to_dict()

    def to(self, device, move_model: bool = False) -> "ActivationCache":
        """The activations (and with move_model, the attached params) on a JAX device ("cpu",
        "gpu"/"cuda", or a jax.Device); returns self, as TransformerLens."""
        if isinstance(device, str):
            platform = device.split(":")[0]
            device = jax.devices("gpu" if platform == "cuda" else platform)[0]
        self.stacked = jax.device_put(self.stacked, device)
        self.outer = jax.device_put(self.outer, device)
        if move_model and self.params is not None:
            self.params = jax.device_put(self.params, device)
        return self

    def toggle_autodiff(self, mode: bool = False) -> None:
        """No-op: JAX arrays carry no autograd state (differentiate functions with jax.grad)."""

    def with_model(self, model: Optional[Any]) -> "ActivationCache":
        """The same activations with a model's params and tokenizer attached (for analyses that
        read weights or take tokens as strings); `None` detaches them."""
        return dataclasses.replace(self, params=getattr(model, "params", None),
                                   tokenizer=getattr(model, "tokenizer", None))


def _take(x: jax.Array, index, copy: bool = False) -> jax.Array:
    """`x[index]` (ints and slices). An array on one CPU device is indexed as a NumPy view and
    put back, which compiles nothing: eager indexing compiles a program per shape (30-80 ms on 2
    cores) and a notebook reads a cache in many shapes. `copy` gives the result its own buffer,
    so that keeping one layer does not keep the whole stack alive. Elsewhere (accelerators,
    sharded arrays, under a trace) `x[index]`."""
    if isinstance(x, jax.core.Tracer) or not isinstance(x, jax.Array):
        return x[index]
    devices = x.sharding.device_set
    if len(devices) != 1 or next(iter(devices)).platform != "cpu":
        return x[index]
    view = np.asarray(x)[index]
    return jax.device_put(np.array(view) if copy else view, x.sharding if x.committed else None)


@functools.partial(quick_jit, static_argnames=("n",))
def _first_positions(stacked: dict, outer: dict, n: int):
    """One program for every entry (not one per array): position axes cut to n."""
    def cut(name: str, x, batch_axis: int):
        if name.endswith(("hook_attn_scores", "hook_pattern")):  # [batch, head, q, k]
            return x[..., :n, :n]
        return jax.lax.slice_in_dim(x, 0, n, axis=batch_axis + 1)  # [batch, pos, ...]

    return ({k: cut(k, v, 1) for k, v in stacked.items()},
            {k: cut(k, v, 0) for k, v in outer.items()})
