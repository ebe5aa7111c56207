"""TransformerLens's `patching` functions, same names, arguments and result shapes, run as sweeps.

    clean_logits, clean_cache = model.run_with_cache(clean_tokens)
    result = get_act_patch_attn_head_out_all_pos(model, corrupted_tokens, clean_cache, metric)
    # [n_layers, n_heads]; metric(logits) -> scalar, a JAX function

Each function takes `(model, corrupted_tokens, clean_cache, patching_metric)` like
TransformerLens, plus keyword options: `index_df` / `return_index_df` (as TransformerLens;
rows are any [n, k] int table, a pandas DataFrame included), `chunk_size`, `logit_positions`,
`sharding` and `progress` (see `activation_sweep`).
"""

from __future__ import annotations

import itertools
from typing import Callable, Optional, Sequence

import jax.numpy as jnp
import numpy as np

from jtlens.experiments.patching import planning as P
from jtlens.experiments.patching import sweep as S

AXIS_NAMES = ("layer", "pos", "head_index", "head", "src_pos", "dest_pos")


def _axis_ranges(cfg, template: str, n_pos: int, names: Sequence[str]) -> list[int]:
    heads = cfg.n_kv_heads if template in ("attn.hook_k", "attn.hook_v") else cfg.n_heads
    ranges = {"layer": cfg.n_layers, "pos": n_pos, "src_pos": n_pos, "dest_pos": n_pos,
              "head_index": heads, "head": heads}
    bad = [n for n in names if n not in ranges]
    if bad:
        raise ValueError(f"unknown index axis {bad[0]!r}; use some of {AXIS_NAMES}")
    return [ranges[n] for n in names]


def generic_activation_patch(model, corrupted_tokens, clean_cache, patching_metric: Callable,
                             patch_setter: Callable, activation_name: str,
                             index_axis_names: Optional[Sequence[str]] = None, index_df=None,
                             return_index_df: bool = False, *, chunk_size: Optional[int] = None,
                             logit_positions: Optional[Sequence[int]] = None, sharding=None,
                             progress: bool = True):
    """The metric after patching each index of `activation_name` from the clean run.

    Args:
      model: a jtlens HookedTransformer (anything with `.cfg` and `.params`).
      corrupted_tokens: int [batch, pos].
      clean_cache: the clean run's ActivationCache.
      patching_metric: JAX function, logits [batch, pos, d_vocab] -> scalar.
      patch_setter: `(corrupted_act, index, clean_act) -> act`, jittable with traced `index`
        (e.g. `layer_pos_patch_setter`; write `.at[...].set` where TransformerLens assigns).
      activation_name: a per-layer activation ("resid_pre", "z", "pattern", ...).
      index_axis_names: axes to sweep over fully (first is "layer"); the result has one
        dimension per axis.
      index_df: explicit rows instead ([n, k] ints or a DataFrame, column 0 the layer); the
        result is then flat, one entry per row.
      return_index_df: also return the rows as a pandas DataFrame.
    Returns: float32 array of the metric per patch (and the DataFrame).
    """
    cfg = model.cfg
    tokens = P.corrupted_tokens(model, corrupted_tokens)
    template = P.per_layer_template(cfg, activation_name)
    if (index_df is None) == (index_axis_names is None):
        raise ValueError("give exactly one of index_axis_names (sweep every index) and index_df "
                         "(explicit rows)")
    if index_df is None:
        shape = _axis_ranges(cfg, template, tokens.shape[-1], index_axis_names)
        rows = np.array(list(itertools.product(*map(range, shape))), np.int32).reshape(-1, len(shape))
        columns = list(index_axis_names)
    else:
        raw = np.asarray(index_df.to_numpy() if hasattr(index_df, "to_numpy") else index_df)
        if raw.ndim != 2 or not raw.size or raw.dtype.kind not in "iu":
            raise ValueError(f"index_df must be a non-empty [n, k] table of integers ([layer, ...] "
                             f"per row); got {raw.dtype} of shape {raw.shape}")
        rows = raw.astype(np.int32)
        shape = [len(rows)]
        columns = list(getattr(index_df, "columns", [f"axis_{i}" for i in range(rows.shape[1])]))
    known = [c for c in columns if c in AXIS_NAMES]
    limits = _axis_ranges(cfg, template, tokens.shape[-1], known if len(known) == len(columns) else ["layer"])
    for k, limit in enumerate(limits):
        if rows.size and (rows[:, k].min() < 0 or rows[:, k].max() >= limit):
            raise ValueError(f"index column {columns[k]!r} has values outside [0, {limit}) "
                             f"(first column is the layer)")
    out = S.activation_sweep(model.params, cfg, tokens, P.clean_activation(clean_cache, template),
                             patching_metric, template, patch_setter, rows, chunk_size=chunk_size,
                             logit_positions=logit_positions, sharding=sharding, progress=progress)
    out = jnp.asarray(out.reshape(shape))
    if not return_index_df:
        return out
    import pandas as pd

    return out, pd.DataFrame(rows, columns=columns)


def _specialise(name: str, activation_name: str, setter, axes: tuple, returns: str):
    def patch(model, corrupted_tokens, clean_cache, patching_metric, *, index_df=None,
              return_index_df: bool = False, chunk_size=None, logit_positions=None, sharding=None,
              progress: bool = True):
        return generic_activation_patch(
            model, corrupted_tokens, clean_cache, patching_metric, setter, activation_name,
            None if index_df is not None else axes, index_df, return_index_df,
            chunk_size=chunk_size, logit_positions=logit_positions, sharding=sharding,
            progress=progress)

    patch.__name__ = patch.__qualname__ = name
    patch.__doc__ = (f"Activation patching of {activation_name!r} indexed by {axes}: "
                     f"returns {returns}. See `generic_activation_patch`.")
    patch.activation_name, patch.setter, patch.index_axis_names = activation_name, setter, axes
    return patch


_L = ("layer",)
get_act_patch_resid_pre = _specialise("get_act_patch_resid_pre", "resid_pre",
                                      S.layer_pos_patch_setter, _L + ("pos",), "[n_layers, pos]")
get_act_patch_resid_mid = _specialise("get_act_patch_resid_mid", "resid_mid",
                                      S.layer_pos_patch_setter, _L + ("pos",), "[n_layers, pos]")
get_act_patch_attn_out = _specialise("get_act_patch_attn_out", "attn_out",
                                     S.layer_pos_patch_setter, _L + ("pos",), "[n_layers, pos]")
get_act_patch_mlp_out = _specialise("get_act_patch_mlp_out", "mlp_out",
                                    S.layer_pos_patch_setter, _L + ("pos",), "[n_layers, pos]")


def _head_vector(kind: str, name: str):
    by_pos = _specialise(f"get_act_patch_attn_head_{kind}_by_pos", name,
                         S.layer_pos_head_vector_patch_setter, _L + ("pos", "head"),
                         "[n_layers, pos, n_heads]")
    all_pos = _specialise(f"get_act_patch_attn_head_{kind}_all_pos", name,
                          S.layer_head_vector_patch_setter, _L + ("head",), "[n_layers, n_heads]")
    return by_pos, all_pos


get_act_patch_attn_head_out_by_pos, get_act_patch_attn_head_out_all_pos = _head_vector("out", "z")
get_act_patch_attn_head_q_by_pos, get_act_patch_attn_head_q_all_pos = _head_vector("q", "q")
get_act_patch_attn_head_k_by_pos, get_act_patch_attn_head_k_all_pos = _head_vector("k", "k")
get_act_patch_attn_head_v_by_pos, get_act_patch_attn_head_v_all_pos = _head_vector("v", "v")
get_act_patch_attn_head_pattern_all_pos = _specialise(
    "get_act_patch_attn_head_pattern_all_pos", "pattern", S.layer_head_pattern_patch_setter,
    _L + ("head_index",), "[n_layers, n_heads]")
get_act_patch_attn_head_pattern_by_pos = _specialise(
    "get_act_patch_attn_head_pattern_by_pos", "pattern", S.layer_head_pos_pattern_patch_setter,
    _L + ("head_index", "dest_pos"), "[n_layers, n_heads, dest_pos]")
get_act_patch_attn_head_pattern_dest_src_pos = _specialise(
    "get_act_patch_attn_head_pattern_dest_src_pos", "pattern",
    S.layer_head_dest_src_pos_pattern_patch_setter, _L + ("head_index", "dest_pos", "src_pos"),
    "[n_layers, n_heads, dest_pos, src_pos]")


def _pad_heads(x, n_heads: int):
    """k/v results of a grouped-query model have n_kv_heads columns; TransformerLens zero-pads."""
    return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, n_heads - x.shape[-1])])


def _stack_heads(cfg, results):
    return jnp.stack([_pad_heads(x, cfg.n_heads) for x in results])


def _stack_heads_by_pos(cfg, results):
    """The pattern is swept [layer, head, dest_pos]; TransformerLens reports it [layer, pos, head]."""
    return _stack_heads(cfg, list(results[:-1]) + [jnp.swapaxes(results[-1], 1, 2)])


def _stack(cfg, results):
    return jnp.stack(results)


def _every(name: str, parts: tuple, combine: Callable, doc: str):
    """A sweep of several activations stacked on a new leading axis (`.parts`, `.combine` let
    attribution patching estimate the same thing)."""

    def every(model, corrupted_tokens, clean_cache, metric, **kw):
        return combine(model.cfg, [f(model, corrupted_tokens, clean_cache, metric, **kw) for f in parts])

    every.__name__ = every.__qualname__ = name
    every.__doc__ = doc + " Keyword options as `generic_activation_patch`."
    every.parts, every.combine = parts, combine
    return every


get_act_patch_attn_head_all_pos_every = _every(
    "get_act_patch_attn_head_all_pos_every",
    (get_act_patch_attn_head_out_all_pos, get_act_patch_attn_head_q_all_pos,
     get_act_patch_attn_head_k_all_pos, get_act_patch_attn_head_v_all_pos,
     get_act_patch_attn_head_pattern_all_pos), _stack_heads,
    "Patching of every head's output, q, k, v and pattern over all positions: "
    "[5, n_layers, n_heads] (k, v zero-padded to n_heads for grouped-query models).")
get_act_patch_attn_head_by_pos_every = _every(
    "get_act_patch_attn_head_by_pos_every",
    (get_act_patch_attn_head_out_by_pos, get_act_patch_attn_head_q_by_pos,
     get_act_patch_attn_head_k_by_pos, get_act_patch_attn_head_v_by_pos,
     get_act_patch_attn_head_pattern_by_pos), _stack_heads_by_pos,
    "As `get_act_patch_attn_head_all_pos_every` per position: [5, n_layers, pos, n_heads] "
    "(the pattern is patched per destination position).")
get_act_patch_block_every = _every(
    "get_act_patch_block_every",
    (get_act_patch_resid_pre, get_act_patch_attn_out, get_act_patch_mlp_out), _stack,
    "Patching of resid_pre, attn_out and mlp_out by (layer, pos): [3, n_layers, pos].")
