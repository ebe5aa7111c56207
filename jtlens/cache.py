"""ActivationCache: stacked activations that answer TransformerLens's keys as views.

Per-layer activations are kept as one array per hook template with a leading layer axis
(`[n_layers, batch, ...]`), which is what `lax.scan` produces and what analyses stack anyway.
`cache["blocks.3.attn.hook_z"]`, `cache["z", 3]` and `cache["blocks.*.attn.hook_z"]` are views.
The cache is a pytree: it passes through `jit`, `vmap` and `jax.device_get`.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jtlens.config import Config
from jtlens.slice import Slice, check_in_bounds
from jtlens.hooks import ALL_LAYERS, canonical_name, hook_names, split_name, unknown_hook_error


@jax.tree_util.register_pytree_node_class
class ActivationCache:
    """Activations of one forward, keyed by TransformerLens hook names.

    Attributes:
      cfg: the model's Config.
      stacked: template -> [n_captured_layers, ...] for per-layer hooks.
      layers: template -> the layers held in `stacked[template]`, in order.
      outer: full name -> array for hooks outside the blocks (hook_embed, ln_final.*, ...).
      has_batch_dim: False after `remove_batch_dim()`.
      model: the HookedTransformer it came from, when there is one (needed by analyses).
    """

    def __init__(self, cfg: Config, stacked: dict, layers: dict, outer: dict,
                 has_batch_dim: bool = True, model: Any = None):
        self.cfg = cfg
        self.stacked = dict(stacked)
        self.layers = {k: tuple(v) for k, v in layers.items()}
        self.outer = dict(outer)
        self.has_batch_dim = has_batch_dim
        self.model = model

    @classmethod
    def from_forward(cls, cfg: Config, captured: dict, outer: dict, ys: dict, first_layer: int = 0):
        """Assemble from the scan outputs `ys` (template -> [layers run, ...]) of a forward."""
        stacked, layers = {}, {}
        for template, arr in ys.items():
            run = range(first_layer, first_layer + arr.shape[0])
            wanted = sorted(l for l in captured[template] if l in run)
            if not wanted:
                continue
            if wanted != list(run):
                arr = arr[jnp.asarray([l - first_layer for l in wanted])]
            stacked[template], layers[template] = arr, wanted
        return cls(cfg, stacked, layers, {k: v for k, v in outer.items() if k in captured})

    # ------------------------------------------------------------------ pytree
    def tree_flatten(self):
        keys = tuple(self.stacked)
        okeys = tuple(self.outer)
        children = (tuple(self.stacked[k] for k in keys), tuple(self.outer[k] for k in okeys))
        aux = (self.cfg, keys, tuple(self.layers[k] for k in keys), okeys, self.has_batch_dim,
               self.model)
        return children, aux

    @classmethod
    def tree_unflatten(cls, aux, children):
        cfg, keys, layers, okeys, has_batch_dim, model = aux
        return cls(cfg, dict(zip(keys, children[0])), dict(zip(keys, layers)),
                   dict(zip(okeys, children[1])), has_batch_dim, model)

    # ------------------------------------------------------------------ dict-like access
    def keys(self) -> list[str]:
        """Concrete hook names held, in execution order."""
        present = set(self.outer) | {f"blocks.{l}.{t}" for t, ls in self.layers.items() for l in ls}
        return [n for n in hook_names(self.cfg, optional=True) if n in present]

    def __getitem__(self, key) -> jax.Array:
        if isinstance(key, str) and key in self.outer:
            return self.outer[key]
        try:
            full = canonical_name(key, self.cfg)
        except (TypeError, ValueError):
            raise KeyError(str(unknown_hook_error(key, self.cfg))) from None
        template, layer = split_name(full)
        if layer is None:
            if template in self.outer:
                return self.outer[template]
        elif template in self.stacked:
            held = self.layers[template]
            if layer == ALL_LAYERS:
                if held == tuple(range(self.cfg.n_layers)):
                    return self.stacked[template]
            elif layer in held:
                return self.stacked[template][held.index(layer)]
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
        return len(self.outer) + sum(len(v) for v in self.layers.values())

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
                raise ValueError(f"remove_batch_dim needs batch size 1; {k} has batch {v.shape[1]}")
            self.stacked[k] = v[:, 0]
        for k, v in self.outer.items():
            if v.shape[0] != 1:
                raise ValueError(f"remove_batch_dim needs batch size 1; {k} has batch {v.shape[0]}")
            self.outer[k] = v[0]
        self.has_batch_dim = False
        return self

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
        keep = not isinstance(batch_slice, (int, np.integer))
        return ActivationCache(self.cfg, {k: v[:, batch_slice] for k, v in self.stacked.items()},
                               self.layers, {k: v[batch_slice] for k, v in self.outer.items()},
                               keep, self.model)

    def slice_positions(self, pos_slice) -> "ActivationCache":
        """A new cache with `pos_slice` (a Slice or its input; an int keeps the axis) applied to
        every activation's position axis: -3 for q/k/v/z/result (per-head), else -2 (for attention
        scores and patterns, the query position). TransformerLens's run_with_cache(pos_slice=...)."""
        sl = Slice.unwrap(pos_slice)

        def cut(name: str, x, per_entry_ndim: int):
            dim = -3 if name.endswith(("hook_q", "hook_k", "hook_v", "hook_z", "hook_result")) else -2
            return sl.apply(x, dim=x.ndim + dim) if per_entry_ndim >= -dim else x

        return ActivationCache(self.cfg, {k: cut(k, v, v.ndim - 1) for k, v in self.stacked.items()},
                               self.layers, {k: cut(k, v, v.ndim) for k, v in self.outer.items()},
                               self.has_batch_dim, self.model)

    @property
    def cache_dict(self) -> dict[str, jax.Array]:
        """TransformerLens's `cache.cache_dict`: the flat {hook name: array} dict."""
        return self.to_dict()

    def to(self, device, move_model: bool = False) -> "ActivationCache":
        """The activations on a JAX device ("cpu", "gpu"/"cuda", or a jax.Device); returns self."""
        if isinstance(device, str):
            platform = device.split(":")[0]
            device = jax.devices("gpu" if platform == "cuda" else platform)[0]
        self.stacked = jax.device_put(self.stacked, device)
        self.outer = jax.device_put(self.outer, device)
        if move_model and self.model is not None:
            self.model.to(device)
        return self

    def toggle_autodiff(self, mode: bool = False) -> None:
        """No-op: JAX arrays carry no autograd state (differentiate functions with jax.grad)."""

    def with_model(self, model: Optional[Any]) -> "ActivationCache":
        """The same activations, attached to a model (for analyses that read its weights)."""
        return ActivationCache(self.cfg, self.stacked, self.layers, self.outer,
                               self.has_batch_dim, model)


# TransformerLens's analysis methods (cache.accumulated_resid(...), cache.logit_attrs(...), ...)
# live as functions in cache_analysis; bind them so both spellings work.
from jtlens import cache_analysis as _analysis  # noqa: E402

for _fn in _analysis.ANALYSES:
    setattr(ActivationCache, _fn.__name__, _fn)
