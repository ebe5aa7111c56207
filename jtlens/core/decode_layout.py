"""Weights laid out for a token-by-token decode loop (generation).

The forward's params are layer-stacked ([n_layers, ...]) in TransformerLens's shapes (W_in
[d_model, d_mlp], W_Q [n_heads, d_model, d_head], W_O [n_heads, d_head, d_model]). That suits a
long sequence under `lax.scan`, where each weight is read once for many positions. A decode
step reads every weight to produce one position per row, so its cost is the bytes moved, and
on CPU XLA moves weights more than once per step: it copies each layer out of the stacked
arrays (the scan's slice) and transposes W_Q/W_K/W_V before their products. `decode_layout`
pays for such copies once, before the loop: one array per layer (the forward then unrolls the
layers) and every matrix flattened to the 2D matrix of its product (`FlatMatrix`), which the
forward reads as it is. Which 2D order is faster depends on the batch (XLA's CPU kernels take
a single row fastest against [in, out], several rows against [out, in]), so the caller picks.

`python -m benchmarks.generate` measures the effect (GPT-2-small shape, 2-core machine).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

_INPUT_AXES = {  # the axes each matrix contracts with its input, in the forward's layout
    ("attn", "W_Q"): (1,), ("attn", "W_K"): (1,), ("attn", "W_V"): (1,),  # [h, d_model, d_head]
    ("attn", "W_O"): (0, 1),                                            # [h, d_head, d_model]
    ("mlp", "W_in"): (0,), ("mlp", "W_gate"): (0,), ("mlp", "W_out"): (0,),
    ("unembed", "W_U"): (0,),
}


@functools.partial(jax.tree_util.register_dataclass, data_fields=["w"],
                   meta_fields=["shape", "input_axes", "input_last"])
@dataclasses.dataclass(frozen=True)
class FlatMatrix:
    """A weight of the forward's `shape` stored as a 2D matrix, [in, out] or (`input_last`)
    [out, in], where `in` flattens its `input_axes` and `out` the others, in order."""

    w: jax.Array
    shape: tuple
    input_axes: tuple
    input_last: bool

    @property
    def _order(self) -> list:
        rest = [a for a in range(len(self.shape)) if a not in self.input_axes]
        return rest + list(self.input_axes) if self.input_last else list(self.input_axes) + rest

    @property
    def out_shape(self) -> tuple:
        return tuple(self.shape[a] for a in range(len(self.shape)) if a not in self.input_axes)

    @classmethod
    def of(cls, w, input_axes: tuple, input_last: bool) -> "FlatMatrix":
        flat = cls(None, tuple(w.shape), tuple(input_axes), input_last)
        n_in = int(np.prod([w.shape[a] for a in input_axes]))
        w2 = jnp.transpose(w, flat._order).reshape((-1, n_in) if input_last else (n_in, -1))
        return dataclasses.replace(flat, w=w2)

    def unflattened(self) -> jax.Array:
        """The weight in the forward's own layout (for the rare products that need it)."""
        w = self.w.reshape(tuple(self.shape[a] for a in self._order))
        return jnp.transpose(w, np.argsort(self._order))

    def __call__(self, x):
        """x [..., *input axes] times this matrix -> [..., *out_shape]."""
        n_in = len(self.input_axes)
        x2 = x.reshape(x.shape[:x.ndim - n_in] + (-1,))
        y = jnp.einsum("...i,oi->...o", x2, self.w) if self.input_last else x2 @ self.w
        return y.reshape(y.shape[:-1] + self.out_shape)


def decode_layout(params: dict, input_last: bool) -> dict:
    """`params` with `blocks` as a tuple of per-layer dicts and every matrix a `FlatMatrix`.

    The same model: `forward`/`forward_with_kv` give the same outputs from either layout (sums
    run in a different order, within float rounding). Costs one copy of the matrices; use it for
    loops that run the model many times on few positions. `input_last`: store [out, in]
    (faster for several rows per step on CPU) rather than [in, out] (faster for one).
    """
    flat = lambda part, sub: sub if not isinstance(sub, dict) else {  # noqa: E731
        k: FlatMatrix.of(w, _INPUT_AXES[part, k], input_last) if (part, k) in _INPUT_AXES else w
        for k, w in sub.items()}
    blocks = params["blocks"]
    n_layers = jax.tree_util.tree_leaves(blocks)[0].shape[0]
    layers = tuple({part: flat(part, sub) for part, sub in
                    jax.tree_util.tree_map(lambda a: a[i], blocks).items()}
                   for i in range(n_layers))
    return dict(params, blocks=layers, unembed=flat("unembed", params["unembed"]))
