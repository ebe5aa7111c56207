"""The activation-patching sweep as one compiled, batched, shardable program.

TransformerLens runs one forward per patch. Here every patch of a sweep is a row of integer
indices (`[layer, ...]`); rows are grouped by layer, and each group runs as `vmap`-ed chunks of
one jitted function that starts from the corrupted residual at that layer (layers before the
patch are skipped, `run_blocks(start_layer=...)`), patches with a setter, and reduces the
logits to a scalar with the caller's metric. The layer is a traced argument, so the whole sweep
compiles once.

Key/value reuse (decoders, patches of a single query position p): attention is causal, so every
position before p is the corrupted run's at every layer. Such a patch runs only positions
[start, n_pos) for a bucketed `start <= p`, attending to the corrupted run's cached keys and
values for the slots before `start`; the logits the metric reads before `start` are the
corrupted run's. Rows are grouped by (start, layer), so there is one compile per start.
Opt-in (`activation_sweep(reuse_kv=True)`): see its docstring for why it is not the default.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jtlens.core.checks import check_tokens
from jtlens.core.config import Config
from jtlens.core.hooks import Hooks
from jtlens.core.kv_cache import KeyValueCache
from jtlens.core.forward import context, forward_with_cache, forward_with_kv
from jtlens.core.pieces import KVSlots, run_blocks, unembed
from jtlens.experiments.patching.planning import Metric, check_rows, chunk_sharding, chunk_splits, plan
from jtlens.core.progress import shown
from jtlens.io.sharding import place, to_host


# ----------------------------------------------------------------------------- setters

def _patch_at(corrupted, clean, axes: dict):
    """`corrupted` with the slice at {axis: index} replaced by `clean` (indices may be traced)."""
    mask = jnp.bool_(True)
    for axis, i in axes.items():
        shape = [1] * corrupted.ndim
        shape[axis] = corrupted.shape[axis]
        mask = mask & (jnp.arange(corrupted.shape[axis]).reshape(shape) == i)
    return jnp.where(mask, clean.astype(corrupted.dtype), corrupted)


def _setter(name: str, axes: tuple, layout: str):
    """A TransformerLens-named patch setter: index[1:] addresses activation axes `axes`."""

    def setter(corrupted_activation, index, clean_activation):
        return _patch_at(corrupted_activation, clean_activation,
                         {ax: index[k + 1] for k, ax in enumerate(axes)})

    setter.__name__ = setter.__qualname__ = name
    setter.__doc__ = (f"Patch where index = [layer, {', '.join(layout.split()[:len(axes)])}] on an "
                      f"activation laid out [batch, ...]; jittable, indices may be traced.")
    setter.axes = axes  # read by attribution patching to know which axes a patch covers
    return setter


layer_pos_patch_setter = _setter("layer_pos_patch_setter", (1,), "pos")
layer_pos_head_vector_patch_setter = _setter("layer_pos_head_vector_patch_setter", (1, 2), "pos head_index")
layer_head_vector_patch_setter = _setter("layer_head_vector_patch_setter", (2,), "head_index")
layer_head_pattern_patch_setter = _setter("layer_head_pattern_patch_setter", (1,), "head_index")
layer_head_pos_pattern_patch_setter = _setter("layer_head_pos_pattern_patch_setter", (1, 2),
                                              "head_index dest_pos")
layer_head_dest_src_pos_pattern_patch_setter = _setter(
    "layer_head_dest_src_pos_pattern_patch_setter", (1, 2, 3), "head_index dest_pos src_pos")


# ----------------------------------------------------------------------------- the program

def corrupted_residuals(params, tokens, cfg: Config, extra: Sequence[str] = ()) -> dict:
    """One corrupted forward: {template: [n_layers, batch, ...]} for hook_resid_pre (+ `extra`)."""
    names = ("hook_resid_pre",) + tuple(extra)
    _, cache = _capture_jit(params, tokens, cfg=cfg, names=tuple(f"blocks.*.{n}" for n in names))
    return {n: cache.stacked[n] for n in names}


@functools.partial(jax.jit, static_argnames=("cfg", "names"))
def _capture_jit(params, tokens, *, cfg, names):
    return forward_with_cache(params, tokens, cfg, Hooks(capture=names), return_type=None)


def check_clean_shape(params, cfg: Config, tokens, template: str, clean) -> None:
    """Clean activations must have the corrupted run's shape (same batch, same length)."""
    want = jax.eval_shape(lambda p, t: _capture_jit(p, t, cfg=cfg, names=(f"blocks.*.{template}",)),
                          params, tokens)[1].stacked[template].shape
    if tuple(clean.shape) != tuple(want):
        raise ValueError(f"clean {template} has shape {tuple(clean.shape)} but the corrupted run's "
                         f"is {tuple(want)}; run clean and corrupted prompts with the same batch "
                         f"size and number of tokens")


def run_from_layer(params, resid_pre, layer, cfg: Config, hooks: Hooks,
                   logit_positions: Optional[tuple] = None, past: Optional[tuple] = None):
    """Logits of a run that starts from `resid_pre[layer]` ([n_layers, batch, pos, d_model]) at a
    traced `layer`, with `hooks`; only `logit_positions` are unembedded when given.

    With `past` = the corrupted run's (keys, values), each [n_layers, batch, n_kv_heads, n_pos,
    d_head] (`corrupted_keys_values`), `resid_pre` holds only the last positions
    [start, n_pos), start = n_pos - resid_pre.shape[2]: they attend to the cached slots before
    `start`, and `logit_positions` count from `start`.
    """
    resid = jax.lax.dynamic_index_in_dim(resid_pre, layer, keepdims=False)
    ctx = context(cfg, hooks, *resid.shape[:2])
    if past is not None:
        k, v = past
        batch, n_pos = k.shape[1], k.shape[3]
        start = n_pos - resid.shape[1]
        ctx = dataclasses.replace(ctx, positions=ctx.positions + start,
                                  kv=KVSlots(k, v, start, jnp.ones((batch, n_pos), jnp.int32)))
    resid, _ = run_blocks(params["blocks"], resid, ctx, start_layer=layer)
    if logit_positions is not None:
        resid = resid[:, jnp.asarray(logit_positions)]
    return unembed(params, resid, ctx)


def scalar_metric(metric: Metric, logits, n_pos: Optional[int] = None, positions=None):
    """metric(logits) as a float32 scalar; with `n_pos`, `logits` hold only `positions` and are
    scattered into zero logits of full length first (the metric reads no other position)."""
    if n_pos is not None:
        full = jnp.zeros((logits.shape[0], n_pos) + logits.shape[2:], logits.dtype)
        logits = full.at[:, jnp.asarray(positions)].set(logits)
    try:
        raw = metric(logits)
    except jax.errors.ConcretizationTypeError as err:
        raise TypeError(
            "patching_metric is traced (the sweep runs it under jit and vmap), so it cannot call "
            "float() / .item() or branch with Python `if` on values of the logits: return a JAX "
            "scalar computed with jnp (e.g. `(logits[:, -1, a] - logits[:, -1, b]).mean()`, and "
            "jnp.where instead of if)") from err
    if isinstance(logits, jax.core.Tracer) and not isinstance(raw, jax.core.Tracer):
        # Traced logits in, untraced value out: every patch would get this same number.
        raise TypeError(f"patching_metric returned {repr(raw)[:60]}, a constant that does not depend on "
                        f"the logits; compute it from them with jnp (e.g. "
                        f"`(logits[:, -1, a] - logits[:, -1, b]).mean()`)")
    out = jnp.asarray(raw)
    if out.shape != ():
        raise ValueError(f"patching_metric must return a scalar; it returned shape {out.shape} "
                         f"for logits of shape {logits.shape} (reduce over batch, e.g. .mean())")
    return out.astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("cfg", "template", "setter", "metric",
                                             "logit_positions", "expand_to", "start", "pos_column"))
def _patch_chunk(params, resid_pre, clean, layer, idx, past=None, corrupted_logits=None, *, cfg,
                 template, setter, metric, logit_positions, expand_to, start=0, pos_column=None):
    """Metric of each patch `idx[i]` ([chunk, k], all at `layer`) -> [chunk].

    With `past` (key/value reuse, see `corrupted_keys_values`): every patch's position, column
    `pos_column` of `idx`, is >= `start`, and only positions [start, n_pos) run. `clean` and
    `resid_pre` are cut to those positions and the index shifted to match; the metric reads the
    corrupted run's `corrupted_logits` ([batch, len(logit_positions or all), d_vocab]) before
    `start`.
    """
    if past is not None:
        positions = logit_positions or tuple(range(resid_pre.shape[2]))
        resid_pre = resid_pre[:, :, start:]
        clean = jax.lax.slice_in_dim(clean, start, None, axis=1 + REUSE_POSITION_AXIS[template])
        idx = idx.at[:, pos_column].add(-start)
        ran = [i for i, q in enumerate(positions) if q >= start]  # logits the chunk computes

    def one(index):
        def patch(act, hook):
            l = hook.layer()
            clean_l = jax.lax.dynamic_index_in_dim(clean, l, keepdims=False)
            return jnp.where(l == layer, setter(act, index, clean_l), act)

        hooks = Hooks(fns={f"blocks.*.{template}": patch})
        if past is None:
            logits = run_from_layer(params, resid_pre, layer, cfg, hooks, logit_positions)
        else:
            logits = corrupted_logits
            if ran:
                new = run_from_layer(params, resid_pre, layer, cfg, hooks,
                                     tuple(positions[i] - start for i in ran), past)
                logits = logits.at[:, jnp.asarray(ran)].set(new.astype(logits.dtype))
        return scalar_metric(metric, logits, expand_to, logit_positions)

    return jax.vmap(one)(idx)


# ----------------------------------------------------------------------------- key/value reuse

# The activation axis that holds the query position, for the per-layer activations whose
# slice at one query position p changes nothing before p. Others are never reused.
REUSE_POSITION_AXIS = {t: 1 for t in (
    "hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out",
    "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_rot_q", "attn.hook_rot_k",
    "attn.hook_z", "attn.hook_result", "mlp.hook_pre", "mlp.hook_post")}
REUSE_POSITION_AXIS.update({"attn.hook_attn_scores": 2, "attn.hook_pattern": 2})  # [b, h, q, k]

KV_REUSE_STARTS = 4  # evenly spaced run starts (`reuse_starts`), one compile each


def reuse_column(cfg: Config, template: str, setter: Callable) -> Optional[int]:
    """The index column holding the patched query position when key/value reuse is exact for
    this sweep, else None: a causal decoder (no shortformer positions, which the sweep's
    recomputation leaves out of keys) and a setter that patches one slice of the query axis."""
    axes = getattr(setter, "axes", ())
    axis = REUSE_POSITION_AXIS.get(template)
    if (cfg.post_ln or cfg.attention_dir != "causal" or cfg.positional_embedding_type == "shortformer"
            or axis not in axes):
        return None
    return 1 + axes.index(axis)


def reuse_starts(positions: np.ndarray, n_pos: int, n_starts: int = KV_REUSE_STARTS) -> np.ndarray:
    """The start of the run of each patch at `positions` ([n]): the largest of `n_starts`
    evenly spaced starts (0, n_pos/n_starts, ...) not past it."""
    starts = np.unique(np.arange(n_starts) * n_pos // n_starts)
    return starts[np.searchsorted(starts, positions, side="right") - 1]


def corrupted_keys_values(params, tokens, cfg: Config, logit_positions: Optional[tuple]):
    """The corrupted run's ((keys, values), logits): keys/values [n_layers, batch, n_kv_heads,
    n_pos, d_head] (after rotary / qk-norm, as attention reads them), logits
    [batch, len(logit_positions or all), d_vocab_out]."""
    return _kv_jit(params, tokens, cfg=cfg, logit_positions=logit_positions)


@functools.partial(jax.jit, static_argnames=("cfg", "logit_positions"))
def _kv_jit(params, tokens, *, cfg, logit_positions):
    logits, cache = forward_with_kv(params, tokens, cfg, KeyValueCache.init(cfg, *tokens.shape))
    if logit_positions is not None:
        logits = logits[:, jnp.asarray(logit_positions)]
    return (cache.k, cache.v), logits


def _group_keys(rows: np.ndarray, starts) -> np.ndarray:
    """[n, 1] layers, or [n, 2] (start, layer) with key/value reuse: rows sharing a key share
    chunks (one traced layer, one static start)."""
    return rows[:, :1] if starts is None else np.stack([np.asarray(starts), rows[:, 0]], axis=1)


def map_rows(fn: Callable, rows: np.ndarray, chunk_size: int, sharding=None,
             progress: bool = True, desc: str = "patching", starts=None) -> np.ndarray:
    """Run `fn(layer, idx_chunk) -> [chunk]` over `rows` ([n, k], column 0 = layer) in fixed-size
    chunks grouped by layer (the last chunk of a group is padded), returning [n] in row order.
    With `starts` ([n] ints, key/value reuse), rows are grouped by (start, layer) and `fn` is
    called as `fn(layer, idx_chunk, start=start)` with a Python int start."""
    rows = np.asarray(rows, np.int32).reshape(len(rows), -1)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size!r} must be a positive integer (patches per chunk)")
    sharding = chunk_sharding(sharding)
    n_dev = chunk_splits(sharding)
    if chunk_size % n_dev:
        raise ValueError(f"chunk_size={chunk_size} must be a multiple of the {n_dev} devices it is "
                         f"split over")
    keys = _group_keys(rows, starts)
    jobs = []
    for key in np.unique(keys, axis=0):
        where = np.nonzero((keys == key).all(1))[0]
        kw = {} if starts is None else {"start": int(key[0])}
        jobs += [(int(key[-1]), kw, where[i:i + chunk_size]) for i in range(0, len(where), chunk_size)]
    out = np.zeros(len(rows), np.float32)
    for layer, kw, where in tqdm(jobs, desc=desc, disable=not shown(progress) or len(jobs) < 2):
        idx = rows[np.pad(where, (0, chunk_size - len(where)), mode="edge")]
        idx = jnp.asarray(idx) if sharding is None else place(idx, sharding)
        out[where] = to_host(fn(jnp.int32(layer), idx, **kw))[:len(where)]  # blocks: honest progress
    return out


def activation_sweep(params, cfg: Config, corrupted_tokens, clean_activation, metric: Metric,
                     template: str, setter: Callable, rows, *, chunk_size: Optional[int] = None,
                     logit_positions: Optional[Sequence[int]] = None, sharding=None,
                     progress: bool = True, resid_pre=None, reuse_kv: bool = False) -> np.ndarray:
    """The metric after each patch of one activation, one compiled program for all of them.

    Args:
      params, cfg: the model.
      corrupted_tokens: int [batch, pos], the run that gets patched.
      clean_activation: the clean run's activation at every layer, [n_layers, batch, ...]
        (e.g. `clean_cache["blocks.*.attn.hook_z"]`).
      metric: logits -> scalar (jittable; a stable function object is compiled once).
      template: per-layer hook template, e.g. "hook_resid_pre", "attn.hook_z".
      setter: `(corrupted_act, index, clean_act) -> patched_act` (jittable), e.g.
        `layer_pos_patch_setter`.
      rows: int [n_patches, k], each `[layer, ...]` as the setter reads it.
      chunk_size: patches per vmapped chunk (default: `planning.default_chunk_size`).
      logit_positions: unembed only these positions; the metric then sees
        [batch, len(logit_positions), d_vocab] (so `logits[:, -1]` still works with `(-1,)`).
        By default only the positions the metric provably reads are unembedded
        (`planning.metric_positions`), and it sees full-shape logits.
      sharding: a Mesh or NamedSharding splitting each chunk over devices.
      resid_pre: the corrupted run's [n_layers, batch, pos, d_model] residuals, if at hand.
      reuse_kv: where exact (`reuse_column`: a causal decoder, a setter patching one query
        position), run each patch from a bucketed start at or before its position on the
        corrupted run's keys and values instead of recomputing the positions before it. Same
        results (to float rounding). Off by default: it splits each layer's rows into
        KV_REUSE_STARTS smaller chunks; on CPU with GPT-2-small and 16-token prompts the extra
        calls cost more than the skipped positions save (resid_pre 0.4x), at 32 tokens it paid
        (1.6x) (benchmarks/patching.py --only reuse).
    Returns: float32 [n_patches].
    """
    corrupted_tokens = jnp.asarray(corrupted_tokens)
    check_tokens(corrupted_tokens, cfg)
    rows = np.asarray(rows)
    clean_activation = jnp.asarray(clean_activation)
    check_clean_shape(params, cfg, corrupted_tokens, template, clean_activation)
    check_rows(rows, setter, clean_activation.shape)
    if resid_pre is None:
        resid_pre = corrupted_residuals(params, corrupted_tokens, cfg)["hook_resid_pre"]
    column = reuse_column(cfg, template, setter) if reuse_kv else None
    starts = None if column is None else reuse_starts(rows[:, column], corrupted_tokens.shape[1])
    per_group = (int(np.unique(_group_keys(rows, starts), axis=0, return_counts=True)[1].max())
                 if len(rows) else 1)
    p = plan(cfg, metric, *corrupted_tokens.shape, per_group, logit_positions=logit_positions,
             chunk_size=chunk_size, sharding=sharding)
    kw = {}
    if starts is not None:
        past, logits = corrupted_keys_values(params, corrupted_tokens, cfg, p.logit_positions)
        kw = dict(past=past, corrupted_logits=logits, pos_column=column)
    fn = functools.partial(_patch_chunk, params, resid_pre, clean_activation, cfg=cfg,
                           template=template, setter=setter, metric=metric,
                           logit_positions=p.logit_positions, expand_to=p.expand_to, **kw)
    return map_rows(fn, rows, p.chunk_size, sharding, progress, desc=f"patching {template}",
                    starts=starts)
