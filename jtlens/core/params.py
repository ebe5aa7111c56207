"""The parameter schema: TransformerLens's names and shapes, layer-stacked, for any Config.

This is the bottom of the package next to `config`: conversions fill this schema from
checkpoints, the forward reads it, loading checks it. Nothing here knows about hooks or models.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jtlens.core.config import Config

Params = dict


class ConversionError(ValueError):
    """A checkpoint does not fit the architecture it claims."""


def _norm_shapes(kind: Optional[str], d: int, lead=()) -> Optional[dict]:
    if kind == "LN":
        return {"w": lead + (d,), "b": lead + (d,)}
    if kind == "RMS":
        return {"w": lead + (d,)}
    return None


def param_shapes(cfg: Config) -> dict:
    """The params pytree of `cfg` as shapes: TransformerLens's names and shapes, layer-stacked."""
    if cfg.d_vocab < 1:
        raise ValueError("Config: d_vocab must be set (a positive vocabulary size), or build the "
                         "model with a tokenizer to infer it from")
    L, D, H, Hkv, Dh = cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.d_head
    post_kind = "RMS" if (cfg.normalization_type or "").startswith("RMS") else "LN"
    attn = {"W_Q": (L, H, D, Dh), "b_Q": (L, H, Dh), "W_K": (L, Hkv, D, Dh), "b_K": (L, Hkv, Dh),
            "W_V": (L, Hkv, D, Dh), "b_V": (L, Hkv, Dh), "W_O": (L, H, Dh, D), "b_O": (L, D)}
    if cfg.use_qk_norm:
        attn["q_norm"] = {"w": (L, Dh)}
        attn["k_norm"] = {"w": (L, Dh)}
    if cfg.qk_norm_over_heads:
        attn["q_norm"] = {"w": (L, H * Dh)}
        attn["k_norm"] = {"w": (L, Hkv * Dh)}
    if cfg.use_attention_sinks:
        attn["sinks"] = (L, H)
    blocks: dict[str, Any] = {"attn": attn}
    norms = {"ln1": cfg.normalization_type}
    if cfg.cross_attention:  # T5 decoder blocks: ln2 + cross_attn, then ln3 before the MLP
        blocks["cross_attn"] = dict(attn)
        norms["ln3"] = cfg.normalization_type
    if not cfg.attn_only:
        M = cfg.d_mlp
        mlp = {"W_in": (L, D, M), "b_in": (L, M), "W_out": (L, M, D), "b_out": (L, D)}
        if cfg.gated_mlp:
            mlp["W_gate"] = (L, D, M)
        if cfg.act_fn == "xielu":
            mlp["act_fn"] = dict.fromkeys(("alpha_p", "alpha_n", "beta", "eps"), (L,))
        if cfg.is_layer_norm_activation() and cfg.normalization_type == "LN":
            mlp["ln"] = _norm_shapes("LN", M, (L,))  # solu_ln; weightless (LNPre) otherwise
        if cfg.num_experts:  # mixture of experts: a router and stacked gated experts
            E = cfg.num_experts
            mlp = {"W_router": (L, D, E), "experts": {
                "W_gate": (L, E, D, M), "W_in": (L, E, D, M), "W_out": (L, E, M, D)}}
            if cfg.moe_biases:
                mlp["b_router"] = (L, E)
                mlp["experts"].update(b_gate=(L, E, M), b_in=(L, E, M), b_out=(L, E, D))
            if cfg.shared_expert_d_mlp:  # (its gate: a router with one output)
                S = cfg.shared_expert_d_mlp
                mlp["shared_expert"] = {"W_gate": (L, D, S), "W_in": (L, D, S), "W_out": (L, S, D)}
                mlp["W_shared_expert_gate"] = (L, D, 1)
        blocks["mlp"] = mlp
        norms["ln2"] = cfg.normalization_type
    if cfg.use_normalization_before_and_after:
        norms["ln1_post"] = post_kind
        if not cfg.attn_only:
            norms["ln2_post"] = post_kind
    for name, kind in norms.items():
        shapes = _norm_shapes(kind, D, (L,))
        if shapes:
            blocks[name] = shapes
    tree: dict[str, Any] = {"embed": {"W_E": (cfg.d_vocab, D)}}
    if cfg.learned_positions:
        tree["pos_embed"] = {"W_pos": (cfg.n_ctx, D)}
    if cfg.positional_embedding_type == "relative_positional_bias":
        tree["rel_pos_bias"] = {"W_rel_pos": (cfg.relative_attention_num_buckets, H)}
    if cfg.post_ln or cfg.post_embedding_ln:
        tree["embed"]["ln"] = _norm_shapes("LN", D)
        if cfg.n_token_types:
            tree["token_type_embed"] = {"W_token_type": (cfg.n_token_types, D)}
    tree["blocks"] = blocks
    final = _norm_shapes(cfg.final_norm_type, D)
    if final:
        tree["ln_final"] = final
    if cfg.mlm_head:
        tree["mlm_head"] = {"W": (D, D), "b": (D,), "ln": _norm_shapes("LN", D)}
    if cfg.mlm_head or not cfg.post_ln:
        tree["unembed"] = {"W_U": (D, cfg.d_vocab_out), "b_U": (cfg.d_vocab_out,)}
    if cfg.cross_attention:  # the encoder stack shares the embedding
        encoder = param_shapes(cfg.encoder_config())
        tree["encoder"] = {k: v for k, v in encoder.items() if k not in ("embed", "unembed")}
    return tree


def init_params(cfg: Config, key: jax.Array) -> Params:
    """Random params in TransformerLens's "gpt2" init: N(0, initializer_range) weights,
    zero biases, unit norm weights."""
    shapes = param_shapes(cfg)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(
        shapes, is_leaf=lambda x: isinstance(x, tuple))
    keys = jax.random.split(key, len(leaves))
    dtype = jnp.dtype(cfg.dtype)
    out = []
    for (path, shape), k in zip(leaves, keys):
        name = path[-1].key
        if name == "w":
            out.append(jnp.ones(shape, dtype))
        elif name.startswith("b"):
            out.append(jnp.zeros(shape, dtype))
        else:
            out.append((cfg.initializer_range * jax.random.normal(k, shape)).astype(dtype))
    return jax.tree_util.tree_unflatten(treedef, out)


def check_and_cast(params: dict, cfg: Config, dtype=None) -> dict:
    """Check `params` has exactly the tree and shapes of `param_shapes(cfg)`; cast to the model dtype."""
    return to_device(check_shapes(params, param_shapes(cfg)), dtype or cfg.dtype)


def to_device(params, dtype) -> dict:
    """Every leaf as a jax.Array of `dtype` on the default device. Host arrays go through
    `jax.device_put` (one copy; `jnp.asarray` of a large host array was measured 3-5x slower)."""
    dtype = jnp.dtype(dtype)

    def put(a):
        if isinstance(a, jax.Array):
            return a if a.dtype == dtype else a.astype(dtype)
        return jax.device_put(np.asarray(a, dtype))

    return jax.tree_util.tree_map(put, params)


def check_shapes(params: dict, want: dict, prefix: str = "") -> dict:
    """`params` (leaves as numpy; device arrays left where they are) when its tree and shapes
    are exactly `want`'s (a tree of shape tuples) and its leaves floating point; else a
    ConversionError naming the first misfit."""

    def walk(got, exp, path):
        if isinstance(exp, dict):
            if not isinstance(got, dict):
                raise ConversionError(f"param {path or '<root>'} should be a dict")
            missing = sorted(set(exp) - set(got))
            extra = sorted(set(got) - set(exp))
            if missing:
                raise ConversionError(f"param {path + '.' if path else ''}{missing[0]} was not filled "
                                      f"by the conversion (missing: {missing})")
            if extra:
                raise ConversionError(f"param {path + '.' if path else ''}{extra[0]} is not part of "
                                      f"this architecture (extra: {extra})")
            return {k: walk(got[k], exp[k], f"{path}.{k}" if path else k) for k in exp}
        arr = floating(got if isinstance(got, jax.Array) else np.asarray(got), f"param {path}")
        if tuple(arr.shape) != tuple(exp):
            raise ConversionError(f"param {path}: converted tensor has shape {tuple(arr.shape)}, "
                                  f"the config expects {tuple(exp)}")
        return arr

    return walk(params, want, prefix)


def floating(arr, what: str):
    """`arr`, refusing integer or boolean data: a weight is never an integer, and casting one
    would hide a checkpoint that does not hold what its names say."""
    if np.dtype(arr.dtype).kind in "iub":
        raise ConversionError(f"{what} holds {arr.dtype} values; a weight must be floating point "
                              f"(the checkpoint is corrupted or mislabelled)")
    return arr
