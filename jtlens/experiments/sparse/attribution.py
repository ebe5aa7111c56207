"""Attribution graphs (circuit-tracer's method) as batched VJPs of the local replacement model.

    graph = attribute(params, cfg, tc, tokens)          # tokens [pos], one prompt
    graph.adjacency                                    # [n_nodes, n_nodes], rows = targets

Nodes, in circuit-tracer's order: active features (layer, pos, feature) (none at the first
`zero_positions` positions, as circuit-tracer leaves out BOS), one error node per (layer, pos),
the input token embeddings, the target logits (the top logits at the last position up to
cumulative probability `desired_logit_prob`, at most `max_n_logits`). A feature node's input is
its pre-activation (less b_enc), a logit node's is its demeaned logit. With patterns and norm
scales frozen and features as inputs (`replacement.run_replacement(acts=...)`) every node input
is linear in the source values, and an edge is the direct effect
`A[t, s] = value_s * d input_t / d value_s` (for error and token nodes a dot product with the
vector). Each block of `batch_size` rows is one `vmap` of the VJP over its cotangents (a
feature's encoder column at its layer and position, a logit's one-hot), as circuit-tracer
injects gradients.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from jtlens.core.config import Config
from jtlens.experiments.sparse.replacement import Frozen, freeze, run_replacement, true_nodes
from jtlens.experiments.sparse.transcoder import Transcoders


@dataclasses.dataclass
class AttributionGraph:
    """A dense attribution graph (numpy). adjacency[t, s]: direct effect of node s on node t's
    input; columns and rows ordered [features, errors (layer-major), tokens, logits]."""

    tokens: np.ndarray               # [pos]
    active_features: np.ndarray      # [n_features, 3] (layer, pos, feature)
    activation_values: np.ndarray    # [n_features]
    logit_tokens: np.ndarray         # [n_logits] vocabulary ids
    logit_probabilities: np.ndarray  # [n_logits]
    adjacency: np.ndarray            # [n_nodes, n_nodes]
    n_layers: int
    scan: Optional[str] = None

    @property
    def n_pos(self) -> int:
        return len(self.tokens)

    @property
    def n_features(self) -> int:
        return len(self.active_features)

    def node_kinds(self) -> np.ndarray:
        """[n_nodes] 'feature' | 'error' | 'token' | 'logit'."""
        counts = (self.n_features, self.n_layers * self.n_pos, self.n_pos, len(self.logit_tokens))
        return np.repeat(np.array(["feature", "error", "token", "logit"]), counts)


def salient_logits(logits: np.ndarray, max_n_logits: int = 10, desired_logit_prob: float = 0.95):
    """(vocab ids, probabilities) of the fewest top logits whose cumulative probability reaches
    `desired_logit_prob`, at most `max_n_logits` (circuit-tracer's rule)."""
    logits = np.asarray(logits, np.float64)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    top = np.argsort(-probs, kind="stable")[:max_n_logits]
    cutoff = int(np.searchsorted(np.cumsum(probs[top]), desired_logit_prob)) + 1
    top = top[:cutoff]
    return top, probs[top].astype(np.float32)


@dataclasses.dataclass(frozen=True)
class _Nodes:
    """What the linear map from node values to node inputs needs besides those values."""

    feature_index: jax.Array   # [n_features, 3]
    base_acts: jax.Array       # [L, pos, d_tc] activations that are not nodes (first positions)
    base_errors: jax.Array     # [L, pos, d_out] errors that are not nodes
    logit_dirs: jax.Array      # [d_vocab, n_logits] one-hot minus 1/d_vocab


jax.tree_util.register_dataclass(
    _Nodes, data_fields=("feature_index", "base_acts", "base_errors", "logit_dirs"), meta_fields=())


@functools.partial(jax.jit, static_argnames=("cfg",))
def node_inputs(params, cfg: Config, tc: Transcoders, frozen: Frozen, nodes: _Nodes,
                values, errors, embed):
    """What every target node's input is read from, given source node values (feature
    activations [n_features], error vectors [L, pos, d_out], token embeddings [pos, d_model]):
    (the transcoders' inputs [L, pos, d_in] (a feature's input is its encoder column times
    its layer and position's row), the target logits, demeaned [n_logits])."""
    l, p, f = nodes.feature_index.T
    # one scatter per layer (each value lands only in its own layer): the VJP then gathers each
    # layer's [pos, d_tc] cotangent in turn, never holding the whole [L, pos, d_tc] per row
    acts = [nodes.base_acts[i].at[p, f].add(jnp.where(l == i, values, 0.0))
            for i in range(cfg.n_layers)]
    last, mlp_in, _ = run_replacement(params, cfg, tc, frozen, acts=acts,
                                      errors=nodes.base_errors + errors, embed=embed,
                                      last_logits_only=True)
    return mlp_in, last @ nodes.logit_dirs


@functools.partial(jax.jit, static_argnames=("cfg",))
def _rows(params, cfg: Config, tc: Transcoders, frozen: Frozen, nodes: _Nodes, feature_ids,
          logit_ids, values, errors, embed):
    """Adjacency rows [B, n_sources] of B target nodes (feature_ids [B] or logit_ids [B]; -1
    where the row is the other kind, or padding): VJP times source values. As circuit-tracer,
    a feature row's cotangent is its encoder column at its layer and position."""
    f = functools.partial(node_inputs, params, cfg, tc, frozen, nodes)
    (mlp_in, logit_out), vjp_fn = jax.vjp(f, values, errors, embed)
    B = len(feature_ids)
    l, p, k = nodes.feature_index[jnp.maximum(feature_ids, 0)].T
    enc = tc.params["W_enc"][l, :, k] * (feature_ids >= 0)[:, None]          # [B, d_in]
    ct_in = jnp.zeros((B,) + mlp_in.shape, mlp_in.dtype).at[jnp.arange(B), l, p].set(enc)
    ct_logits = jax.nn.one_hot(logit_ids, logit_out.shape[0], dtype=logit_out.dtype)
    g_values, g_errors, g_embed = jax.vmap(vjp_fn)((ct_in, ct_logits))
    return jnp.concatenate([g_values * values,
                            (g_errors * errors).sum(-1).reshape(B, -1),
                            (g_embed * embed).sum(-1)], axis=1)


def partial_influence(rows, row_nodes, probs, n_sources: int, max_iter: int = 128):
    """circuit-tracer's `compute_partial_influences`: each source's influence on the logits
    through the rows computed so far. rows [R, n_sources]; row_nodes [R]: the node each row is
    the input of (logits numbered n_sources + k); probs: the logits' probabilities."""
    a = np.abs(rows)
    a = a / np.maximum(a.sum(1, keepdims=True), 1e-8)
    prod = np.zeros(n_sources + len(probs))
    prod[n_sources:] = probs
    total = np.zeros(n_sources)
    for _ in range(max_iter):
        step = prod[row_nodes] @ a
        if not step.any():
            return total
        total += step
        prod[:n_sources], prod[n_sources:] = step, 0.0
    raise RuntimeError("the influence did not converge: the graph has a cycle")


def attribute(params, cfg: Config, tc: Transcoders, tokens, *, max_n_logits: int = 10,
              desired_logit_prob: float = 0.95, batch_size: int = 64, zero_positions: int = 1,
              max_feature_nodes: Optional[int] = None, update_interval: int = 4,
              frozen: Optional[Frozen] = None) -> AttributionGraph:
    """The attribution graph of `tokens` [pos] through the transcoders `tc` (see module doc).

    batch_size: adjacency rows per vmapped VJP (memory grows with it). zero_positions: leading
    positions whose features and errors are not nodes (circuit-tracer: 1, the BOS token).
    max_feature_nodes: attribute only this many features, chosen as circuit-tracer does (after
    the logits, the unvisited features of highest influence through the rows so far,
    `update_interval * batch_size` at a time); the graph keeps only them.
    """
    frozen = freeze(params, cfg, tc, tokens) if frozen is None else frozen
    acts, errors = true_nodes(tc, frozen)
    keep = (jnp.arange(acts.shape[1]) >= zero_positions)[None, :, None]
    index = np.argwhere(np.asarray((acts != 0) & keep))          # (layer, pos, feature) order
    values = acts[tuple(index.T)]
    node_errors = jnp.where(keep, errors, 0.0)
    logit_tokens, probs = salient_logits(frozen.logits[-1], max_n_logits, desired_logit_prob)
    V = frozen.logits.shape[-1]
    dirs = jax.nn.one_hot(logit_tokens, V, dtype=jnp.float32).T - 1.0 / V
    nodes = _Nodes(jnp.asarray(index, jnp.int32), acts.at[tuple(index.T)].set(0.0),
                   errors - node_errors, dirs)
    primals = (values, node_errors, frozen.embed)
    n_all, n_logit = len(index), len(logit_tokens)

    def rows_of(targets: np.ndarray) -> np.ndarray:  # targets: ids among [features, logits]
        out = [np.zeros((0, n_all + cfg.n_layers * len(frozen.tokens) + len(frozen.tokens)))]
        for start in range(0, len(targets), batch_size):
            chunk = targets[start:start + batch_size]
            ids = np.full(batch_size, -1)
            ids[:len(chunk)] = chunk
            feature_ids = np.where(ids < n_all, ids, -1)
            logit_ids = np.where(ids >= n_all, ids - n_all, -1)
            out.append(np.asarray(_rows(params, cfg, tc, frozen, nodes, feature_ids, logit_ids,
                                        *primals))[:len(chunk)])
        return np.concatenate(out)

    logit_rows = rows_of(n_all + np.arange(n_logit))
    n_sources = logit_rows.shape[1]
    limit = n_all if max_feature_nodes is None else min(max_feature_nodes, n_all)
    if limit == n_all:
        selected, feature_rows = np.arange(n_all), rows_of(np.arange(n_all))
    else:
        selected, parts = np.zeros(0, int), [np.zeros((0, n_sources))]
        visited = np.zeros(n_all, bool)
        while len(selected) < limit:
            rows = np.concatenate([logit_rows] + parts)
            row_nodes = np.r_[n_sources + np.arange(n_logit), selected]
            rank = np.argsort(-partial_influence(rows, row_nodes, probs, n_sources)[:n_all],
                              kind="stable")
            pending = rank[~visited[rank]][:min(update_interval * batch_size, limit - len(selected))]
            parts.append(rows_of(pending))
            visited[pending] = True
            selected = np.r_[selected, pending]
        order = np.argsort(selected)
        selected, feature_rows = selected[order], np.concatenate(parts)[order]
    columns = np.r_[selected, np.arange(n_all, n_sources)]
    n_kept = len(columns)
    adjacency = np.zeros((n_kept + n_logit,) * 2, np.float32)
    adjacency[:len(selected), :n_kept] = feature_rows[:, columns]
    adjacency[n_kept:, :n_kept] = logit_rows[:, columns]
    return AttributionGraph(np.asarray(frozen.tokens), index[selected],
                            np.asarray(values)[selected], logit_tokens, probs, adjacency,
                            cfg.n_layers, tc.cfg.scan)
