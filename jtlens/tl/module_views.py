"""TransformerLens's sub-modules as views on the facade's params: `model.blocks[0].attn.W_Q`,
`model.blocks[0].attn.hook_z.add_hook(f)`, `model.blocks[0].mlp(x)`, `model.unembed.W_U`.

A view holds a params sub-tree, its TransformerLens name prefix and the model. Attribute access
returns a parameter, a hook point handle, or a nested view; calling a view runs that piece of
the one forward (`jtlens.model`) on activations, with the model's registered hooks applied.
"""

from __future__ import annotations

import collections.abc
import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from jtlens.core import components as C
from jtlens.core import model as M
from jtlens.core.config import Config


def expand_kv(name: str, x, cfg: Config):
    """GQA params are stored per key/value head; TransformerLens's W_K/W_V/b_K/b_V expand them
    (repeat_interleave along the head axis: -3 for weights, -2 for biases)."""
    group = cfg.n_heads // cfg.n_kv_heads
    return x if group == 1 else jnp.repeat(x, group, axis=-3 if name.startswith("W") else -2)


class ModuleView:
    """Parameters, hook points and sub-modules under one TransformerLens prefix (`blocks.0.attn`).

    `call(*args, hk)` (when given) runs the piece on activations; `hk` applies the model's
    registered hooks."""

    def __init__(self, tree: dict, prefix: str = "", model: Any = None,
                 call: Optional[Callable] = None):
        self._tree, self._prefix, self._model, self._call = tree, prefix, model, call

    def _name(self, attr: str) -> str:
        return f"{self._prefix}.{attr}" if self._prefix else attr

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._tree:
            v = self._tree[name]
            return ModuleView(v, self._name(name), self._model) if isinstance(v, dict) else v
        full = self._name(name)
        if self._model is not None:
            points = self._model.hook_dict
            if full in points:
                return points[full]
            if any(p.startswith(full + ".") for p in points):  # e.g. ln1 after fold_ln: hooks only
                return ModuleView({}, full, self._model)
        raise AttributeError(f"{full!r}: no parameter, hook point or sub-module of that name here; "
                             f"parameters: {sorted(self._tree)}")

    def __call__(self, *args, **kwargs):
        if self._call is None:
            raise TypeError(f"{self._prefix or 'this view'} is not callable in jtlens; run the "
                            f"model (or start_at_layer / stop_at_layer) instead")
        return self._call(*args, **kwargs)

    def __repr__(self) -> str:
        return f"ModuleView({self._prefix!r}: {sorted(self._tree)})"


def _ctx(model, x, layer=None, local=False, mask=None) -> M.Ctx:
    """A forward context for running one piece on x [batch, pos, ...] with the model's hooks."""
    ctx = M.context(model.cfg, model._persistent_hooks(), x.shape[0], x.shape[1])
    positions = C.positions_from_mask(mask, x.shape[1], x.shape[0])
    return dataclasses.replace(ctx, layer=layer, local=local, mask=mask, positions=positions)


class LayerViews(collections.abc.Sequence):
    """`model.blocks`: layer l's params as a `ModuleView`, sliced when indexed (not every layer
    at every access). `blocks[l](resid)`, `.attn(q, k, v)`, `.mlp(x)`, `.ln1(x)` run the piece."""

    def __init__(self, model: Any):
        self._model = model

    def __len__(self) -> int:
        return self._model.cfg.n_layers

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[l] for l in range(len(self))[index]]
        l = range(len(self))[index]  # negative indices; IndexError past the end
        model, cfg = self._model, self._model.cfg
        layer = jax.tree_util.tree_map(lambda a: a[l], model.params["blocks"])
        local = bool(cfg.attn_types and cfg.attn_types[l] == "local")
        attn = dict(layer["attn"])
        for k in ("W_K", "W_V", "b_K", "b_V"):
            attn[k] = expand_kv(k, attn[k], cfg)
        prefix = f"blocks.{l}"

        def run_attn(query_input, key_input=None, value_input=None, attention_mask=None):
            """Normalised inputs [batch, pos, d_model] -> attention output [batch, pos, d_model]."""
            q = jnp.asarray(query_input)
            k = q if key_input is None else jnp.asarray(key_input)
            v = k if value_input is None else jnp.asarray(value_input)
            mask = None if attention_mask is None else jnp.asarray(attention_mask)
            return M.attention(layer["attn"], q, k, v, _ctx(model, q, l, local, mask))

        def run_mlp(x):
            """Normalised input [batch, pos, d_model] -> MLP output [batch, pos, d_model]."""
            x = jnp.asarray(x)
            return M.mlp(layer["mlp"], x, _ctx(model, x, l))

        def run_norm(which):
            def run(x):
                """[batch, pos, d_model] -> normalised (this block's norm, with its hooks)."""
                x = jnp.asarray(x)
                return M.norm(layer.get(which), cfg.normalization_type, x, _ctx(model, x, l), which)
            return run

        def run_block(resid_pre, attention_mask=None):
            """Residual [batch, pos, d_model] -> the residual after this block."""
            return model(resid_pre, start_at_layer=l, stop_at_layer=l + 1,
                         attention_mask=attention_mask)

        tree = dict(layer, attn=attn)
        view = ModuleView(tree, prefix, model, run_block)
        subs = {"attn": ModuleView(attn, f"{prefix}.attn", model, run_attn)}
        if "mlp" in layer:
            subs["mlp"] = ModuleView(layer["mlp"], f"{prefix}.mlp", model, run_mlp)
        for which in ("ln1", "ln2"):
            if any(h.startswith(f"{prefix}.{which}.") for h in model.hook_dict):
                subs[which] = ModuleView(layer.get(which, {}), f"{prefix}.{which}", model,
                                         run_norm(which))
        view._tree = dict(tree, **subs)
        return view


def top_level_views(model: Any) -> dict[str, ModuleView]:
    """`model.embed`, `model.pos_embed`, `model.unembed`, `model.ln_final` as callable views."""
    cfg, params = model.cfg, model.params

    def run_embed(tokens):
        """tokens [batch, pos] -> W_E[tokens] [batch, pos, d_model]."""
        return jnp.take(params["embed"]["W_E"], jnp.asarray(tokens), axis=0)

    def run_pos_embed(tokens, past_kv_pos_offset: int = 0, attention_mask=None):
        """tokens [batch, pos] -> positional embeddings [batch, pos, d_model], zero on padding.

        As TransformerLens: `attention_mask` [batch, past_kv_pos_offset + pos] covers the cached
        tokens too, and positions count only the unmasked tokens before each one."""
        tokens = jnp.asarray(tokens)
        batch, n = tokens.shape[0], tokens.shape[-1]
        new = slice(past_kv_pos_offset, past_kv_pos_offset + n)
        if attention_mask is None:
            positions = jnp.broadcast_to(jnp.arange(n) + past_kv_pos_offset, (batch, n))
            return jnp.take(params["pos_embed"]["W_pos"], positions, axis=0)
        mask = jnp.asarray(attention_mask)
        if mask.shape[-1] != past_kv_pos_offset + n:
            raise ValueError(f"attention_mask has {mask.shape[-1]} positions; it must cover the "
                             f"cached and new tokens, past_kv_pos_offset + pos = "
                             f"{past_kv_pos_offset} + {n}")
        positions = C.positions_from_mask(mask, mask.shape[-1], batch)[:, new]
        pos = jnp.take(params["pos_embed"]["W_pos"], positions, axis=0)
        return jnp.where(mask[:, new, None] == 0, 0, pos).astype(pos.dtype)

    def run_ln_final(x):
        """[batch, pos, d_model] -> ln_final(x) (with its hooks)."""
        x = jnp.asarray(x)
        return M.final_norm(params, x, _ctx(model, x))

    def run_unembed(x):
        """[batch, pos, d_model] -> logits [batch, pos, d_vocab_out] (no ln_final)."""
        return jnp.asarray(x) @ params["unembed"]["W_U"] + params["unembed"]["b_U"]

    views = {"embed": ModuleView(params["embed"], "embed", model, run_embed)}
    if "pos_embed" in params:
        views["pos_embed"] = ModuleView(params["pos_embed"], "pos_embed", model, run_pos_embed)
    if "unembed" in params:
        views["unembed"] = ModuleView(params["unembed"], "unembed", model, run_unembed)
    if cfg.final_norm_type is not None:
        views["ln_final"] = ModuleView(params.get("ln_final", {}), "ln_final", model, run_ln_final)
    return views
