"""Pruning an attribution graph by influence on the logits (circuit-tracer's `prune_graph`).

Influence: with `A` the adjacency with |.| and rows normalised to sum 1, and `w` the target
logits' probabilities (zero elsewhere), a node's influence is `w @ (A + A^2 + ...)` (the
series ends: the graph is acyclic). Keep the fewest nodes that carry `node_threshold` of the
total influence (tokens and logits always), then the fewest edges of the pruned graph that carry
`edge_threshold` of the edge scores `A' * (w + w @ (A' + A'^2 + ...))[:, None]`, then drop
feature and error nodes left without outgoing edges (features: or incoming) until stable.

Everything works on the graph's `edges` (the rows of features and logits, the only nodes with
inputs), never on the n_nodes^2 adjacency: a path enters a feature row only from a feature
column, so each power of A is one product with the feature rows.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jtlens.experiments.sparse.attribution import AttributionGraph


class PruneResult(NamedTuple):
    node_mask: np.ndarray          # [n_nodes] nodes kept
    edge_mask: np.ndarray          # [n_features + n_logits, n_sources] edges kept, as graph.edges
    cumulative_scores: np.ndarray  # [n_nodes] each node's place in the cumulative influence


def normalize_matrix(matrix):
    """|matrix| with each row scaled to sum 1 (rows of zeros stay zero)."""
    a = jnp.abs(matrix)
    return a / jnp.maximum(a.sum(1, keepdims=True), 1e-10)


def row_nodes(graph: AttributionGraph) -> np.ndarray:
    """[n_features + n_logits]: the node each row of `graph.edges` is the input of."""
    n_sources = graph.edges.shape[1]
    return np.r_[np.arange(graph.n_features), n_sources + np.arange(len(graph.logit_tokens))]


@functools.partial(jax.jit, static_argnames="n_features")
def influence(edges, row_weights, n_features: int):
    """[n_sources]: row_weights [n_rows] @ (A + A^2 + ...) for the adjacency A whose nonzero rows
    are `edges` [n_rows, n_sources] (normalised; rows and columns start with the same
    `n_features` features). The series ends: the graph is acyclic."""
    feature_rows = edges[:n_features]

    def body(state):
        current, total, i = state
        current = current[:n_features] @ feature_rows
        return current, total + current, i + 1

    first = row_weights @ edges
    limit = n_features + 1  # a path visits each feature at most once
    _, total, _ = jax.lax.while_loop(lambda s: s[0][:n_features].any() & (s[2] < limit), body,
                                     (first, first, 0))
    return total


def _row_weights(graph: AttributionGraph) -> jax.Array:
    """[n_rows]: the target logits' probabilities at the logit rows, 0 at the feature rows."""
    return jnp.concatenate([jnp.zeros(graph.n_features, jnp.float32),
                            jnp.asarray(graph.logit_probabilities, jnp.float32)])


def node_influence(graph: AttributionGraph, edges=None) -> np.ndarray:
    """[n_nodes]: each node's influence on the target logits through `edges` (default the
    graph's); the logits' own is 0."""
    edges = normalize_matrix(jnp.asarray(graph.edges if edges is None else edges))
    total = influence(edges, _row_weights(graph), graph.n_features)
    return np.r_[np.asarray(total), np.zeros(len(graph.logit_tokens), np.float32)]


def find_threshold(scores, threshold: float):
    """The smallest score among the top scores that carry `threshold` of their total."""
    s = jnp.sort(scores.ravel())[::-1]
    cumulative = jnp.cumsum(s) / s.sum()
    return s[jnp.minimum(jnp.searchsorted(cumulative, threshold), len(s) - 1)]


def prune_graph(graph: AttributionGraph, node_threshold: float = 0.8,
                edge_threshold: float = 0.98) -> PruneResult:
    """Node and edge masks of the pruned graph, and each node's cumulative influence score."""
    for name, t in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"{name}={t}: it is a fraction of the total influence, in [0, 1]")
    edges = jnp.asarray(graph.edges)
    n_feat, n_sources = graph.n_features, edges.shape[1]
    n_fixed = len(graph.logit_tokens) + graph.n_pos           # tokens and logits, at the end
    inf = node_influence(graph)
    node_mask = inf >= np.asarray(find_threshold(jnp.asarray(inf), node_threshold))
    node_mask[-n_fixed:] = True
    rows = row_nodes(graph)
    keep = jnp.asarray(node_mask)
    normalized = normalize_matrix(jnp.where(keep[rows][:, None] & keep[None, :n_sources], edges, 0.0))
    target = influence(normalized, _row_weights(graph), n_feat)[:n_feat]
    edge_scores = normalized * jnp.concatenate([target, _row_weights(graph)[n_feat:]])[:, None]
    edge_mask = np.array(edge_scores >= find_threshold(edge_scores, edge_threshold))
    n_out = n_feat + graph.n_layers * graph.n_pos  # features and errors: they need outgoing edges

    def drop_dangling():  # feature and error nodes need outgoing edges, features incoming ones
        node_mask[:n_out] &= edge_mask[:, :n_out].any(0)
        node_mask[:n_feat] &= edge_mask[:n_feat].any(1)

    before = node_mask.copy()
    drop_dangling()
    while not (node_mask == before).all():  # each pass may leave new nodes dangling
        before[:] = node_mask
        edge_mask[~node_mask[rows]] = False
        edge_mask[:, ~node_mask[:n_sources]] = False
        drop_dangling()
    order = np.argsort(-inf, kind="stable")
    cumulative = np.zeros(len(inf), np.float32)
    cumulative[order] = np.cumsum(inf[order]) / inf.sum()
    return PruneResult(node_mask, edge_mask, cumulative)


def graph_scores(graph: AttributionGraph) -> tuple[float, float]:
    """(replacement score, completeness score), circuit-tracer's `compute_graph_scores`: the
    share of token-to-logit influence that avoids error nodes, and the influence-weighted share
    of every node's input that comes from features and tokens rather than errors."""
    A = normalize_matrix(jnp.asarray(graph.edges))
    n_feat = graph.n_features
    inf = np.asarray(influence(A, _row_weights(graph), n_feat))        # [n_sources]
    err = slice(n_feat, n_feat + graph.n_layers * graph.n_pos)
    tok = slice(err.stop, err.stop + graph.n_pos)
    token_inf, error_inf = inf[tok].sum(), inf[err].sum()
    replacement = token_inf / (token_inf + error_inf)
    # rows' nodes read part of their input from errors; error and token nodes read nothing
    output = np.r_[inf[:n_feat], graph.logit_probabilities]
    non_error = 1 - np.asarray(A[:, err].sum(-1))
    leaves = inf[n_feat:].sum()
    return (float(replacement),
            float(((non_error * output).sum() + leaves) / (output.sum() + leaves)))
