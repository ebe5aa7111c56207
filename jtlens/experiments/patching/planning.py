"""Inputs and chunk plans shared by every sweep (TransformerLens-named or not).

A sweep takes corrupted tokens, a clean activation, a metric and rows of patch indices. These
functions turn what a user passes into those arrays, and decide which logit positions to
unembed and how many patches run per vmapped chunk.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jtlens.core.config import Config
from jtlens.core.hook_catalogue import hook_catalogue

Metric = Callable[[jax.Array], jax.Array]


# ----------------------------------------------------------------------------- inputs

def corrupted_tokens(model, tokens) -> jax.Array:
    """Token ids [batch, pos] from ids ([pos] or [batch, pos]) or text (a str or list of str,
    tokenized with `model.to_tokens`)."""
    if isinstance(tokens, str) or (isinstance(tokens, list) and tokens and isinstance(tokens[0], str)):
        if getattr(model, "tokenizer", None) is None:
            raise ValueError("text prompts need a model with a tokenizer; pass token ids [batch, pos]")
        return model.to_tokens(tokens)
    tokens = jnp.asarray(np.asarray(tokens))
    return tokens[None] if tokens.ndim == 1 else tokens


def per_layer_template(cfg: Config, activation_name) -> str:
    """The per-layer template (`attn.hook_z`) a sweep patches, from any hook spelling."""
    template, layer = hook_catalogue(cfg).resolve(activation_name)
    if layer is None:
        raise ValueError(f"{activation_name!r} is not inside a block; patching sweeps index "
                         f"per-layer activations (resid_pre, z, pattern, ...)")
    return template


def clean_activation(clean_cache, template: str) -> jax.Array:
    """The clean run's activation at every layer: [n_layers, batch, ...]."""
    try:
        return clean_cache[f"blocks.*.{template}"]
    except KeyError:
        raise ValueError(f"the clean cache lacks {template} at some layer; run the clean prompt "
                         f"with run_with_cache() (or a names_filter that includes it)") from None


def check_rows(rows: np.ndarray, setter: Callable, clean_shape: tuple):
    """Every row `[layer, *index]` must address the activation: an index past an axis would
    patch nothing (the setter compares positions) and silently report the unpatched metric.
    Setters without an `axes` attribute are checked on the layer only."""
    if rows.ndim != 2 or rows.shape[1] < 1 or np.dtype(rows.dtype).kind not in "iu":
        raise ValueError(f"patch rows must be an [n, k] integer table ([layer, ...] per row); got "
                         f"{rows.dtype} of shape {rows.shape}")
    axes = getattr(setter, "axes", ())
    if rows.shape[1] < 1 + len(axes):
        raise ValueError(f"{getattr(setter, '__name__', 'the setter')} reads {1 + len(axes)} index "
                         f"columns ([layer, ...]); the rows have {rows.shape[1]}")
    limits = [("layer", 0, clean_shape[0])] + [(f"column {k + 1}", k + 1, clean_shape[1 + ax])
                                                 for k, ax in enumerate(axes)]
    for name, col, limit in limits:
        if len(rows) and (rows[:, col].min() < 0 or rows[:, col].max() >= limit):
            raise ValueError(f"patch index {name} has values {rows[:, col].min()}..{rows[:, col].max()}"
                             f", outside [0, {limit}) for this activation")


# ----------------------------------------------------------------------------- logit positions

def metric_positions(metric: Metric, logits_shape: tuple) -> Optional[tuple]:
    """The positions a metric reads, when its jaxpr proves it reads only static slices of the
    logits (`logits[:, -1]`, `logits[:, -3:]`); None when it may read anything. The sweep then
    unembeds just those positions, and the metric still sees full-shape logits."""
    spec = jax.ShapeDtypeStruct(logits_shape, jnp.float32)
    try:
        jaxpr = jax.make_jaxpr(metric)(spec).jaxpr
    except Exception:  # a metric that cannot trace on its own is reported by the sweep itself
        return None
    (logits,) = jaxpr.invars
    if logits in jaxpr.outvars:
        return None
    read = set()
    for eqn in jaxpr.eqns:
        if not any(v is logits for v in eqn.invars):
            continue
        if eqn.primitive is not jax.lax.slice_p:
            return None
        start, limit = eqn.params["start_indices"][1], eqn.params["limit_indices"][1]
        read.update(range(start, limit, (eqn.params["strides"] or (1, 1))[1]))
    return tuple(sorted(read)) if 0 < len(read) < logits_shape[1] else None  # 0: a constant


def read_positions(metric: Metric, logit_positions, cfg: Config, batch: int, n_pos: int):
    """(positions to unembed or None, full length to scatter them into or None): the caller's
    `logit_positions` as given, else the positions the metric provably reads."""
    if logit_positions is not None:
        bad = [p for p in logit_positions if not -n_pos <= int(p) < n_pos]
        if bad or not len(logit_positions):
            raise ValueError(f"logit_positions={tuple(logit_positions)}: give positions in "
                             f"[-{n_pos}, {n_pos}) of the {n_pos}-token input")
        return tuple(int(p) % n_pos for p in logit_positions), None
    auto = metric_positions(metric, (batch, n_pos, cfg.d_vocab_out))
    return auto, (None if auto is None else n_pos)


# ----------------------------------------------------------------------------- chunking

@dataclasses.dataclass(frozen=True)
class Plan:
    """How a sweep runs: `logit_positions` to unembed (None: all), `expand_to` the full length
    the metric sees them scattered into (None: it sees them as given), `chunk_size` patches per
    vmapped chunk."""

    logit_positions: Optional[tuple]
    expand_to: Optional[int]
    chunk_size: int


def plan(cfg: Config, metric: Metric, batch: int, n_pos: int, rows_per_layer: int, *,
         logit_positions: Optional[Sequence[int]] = None, chunk_size: Optional[int] = None,
         sharding=None, runs_per_patch: int = 1) -> Plan:
    """The `Plan` of a sweep over [batch, n_pos] prompts with at most `rows_per_layer` patches
    per layer; `runs_per_patch` forwards each patch needs (path patching runs two)."""
    positions, expand_to = read_positions(metric, logit_positions, cfg, batch, n_pos)
    if chunk_size is None:
        n_dev = chunk_splits(sharding)
        chunk_size = default_chunk_size(cfg, runs_per_patch * batch, n_pos,
                                        len(positions or range(n_pos)), rows_per_layer, n_dev)
    return Plan(positions, expand_to, chunk_size)


def default_chunk_size(cfg: Config, batch: int, n_pos: int, n_logit_pos: int, rows: int,
                       n_devices: int = 1) -> int:
    """Patches per vmapped chunk: all rows of a layer, capped so a chunk's activations fit in
    about a quarter of free memory (device memory stats, else the host's available RAM)."""
    per_patch = 4 * batch * (n_pos * (12 * cfg.d_model + 2 * (cfg.d_mlp or 0)
                                      + 3 * cfg.n_heads * n_pos) + n_logit_pos * cfg.d_vocab_out)
    free = _free_bytes()
    size = max(1, min(rows, int(free // 4 // max(per_patch, 1))))
    return -(-size // n_devices) * n_devices


def _free_bytes() -> int:
    stats = jax.devices()[0].memory_stats() or {}
    if "bytes_limit" in stats:
        return stats["bytes_limit"] - stats.get("bytes_in_use", 0)
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def chunk_sharding(sharding) -> Optional[NamedSharding]:
    """A Mesh or a NamedSharding for the chunk axis, or None. A Mesh splits chunks over all its
    axes but "model", which holds tensor-parallel params (`jtlens.shard_params`)."""
    if sharding is None or isinstance(sharding, NamedSharding):
        return sharding
    if isinstance(sharding, Mesh):
        axes = tuple(a for a in sharding.axis_names if a != "model")
        return NamedSharding(sharding, PartitionSpec(axes or None))
    raise TypeError(f"sharding must be a jax.sharding.Mesh or NamedSharding, got {type(sharding).__name__}")


def chunk_splits(sharding) -> int:
    """How many pieces `chunk_sharding(sharding)` cuts a chunk into."""
    sharding = chunk_sharding(sharding)
    if sharding is None or not sharding.spec or sharding.spec[0] is None:
        return 1
    axes = sharding.spec[0]
    return int(np.prod([sharding.mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes)]))
