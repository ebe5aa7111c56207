"""Pruning an attribution graph by influence on the logits (circuit-tracer's `prune_graph`).

Influence: with `A` the adjacency with |.| and rows normalised to sum 1, and `w` the target
logits' probabilities (zero elsewhere), a node's influence is `w @ (A + A^2 + ...)` (the
series ends: the graph is acyclic). Keep the fewest nodes that carry `node_threshold` of the
total influence (tokens and logits always), then the fewest edges of the pruned graph that carry
`edge_threshold` of the edge scores `A' * (w + w @ (A' + A'^2 + ...))[:, None]`, then drop
feature and error nodes left without outgoing edges (features: or incoming) until stable.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jtlens.experiments.sparse.attribution import AttributionGraph


class PruneResult(NamedTuple):
    node_mask: np.ndarray          # [n_nodes] nodes kept
    edge_mask: np.ndarray          # [n_nodes, n_nodes] edges kept (rows targets)
    cumulative_scores: np.ndarray  # [n_nodes] each node's place in the cumulative influence


def normalize_matrix(matrix):
    """|matrix| with each row scaled to sum 1 (rows of zeros stay zero)."""
    a = jnp.abs(matrix)
    return a / jnp.maximum(a.sum(1, keepdims=True), 1e-10)


@jax.jit
def influence(A, weights):
    """weights @ (A + A^2 + ...) for a nilpotent A (an acyclic graph)."""
    def body(state):
        current, total, i = state
        current = current @ A
        return current, total + current, i + 1

    first = weights @ A
    limit = A.shape[0] + 1  # a path visits each node at most once
    _, total, _ = jax.lax.while_loop(lambda s: s[0].any() & (s[2] < limit), body,
                                     (first, first, 0))
    return total


def logit_weights(graph: AttributionGraph) -> jax.Array:
    """[n_nodes]: the target logits' probabilities at the logit nodes, 0 elsewhere."""
    n = graph.adjacency.shape[0]
    n_logits = len(graph.logit_tokens)
    return jnp.zeros(n, jnp.float32).at[n - n_logits:].set(graph.logit_probabilities)


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
    adjacency = jnp.asarray(graph.adjacency)
    w = logit_weights(graph)
    n_fixed = len(graph.logit_tokens) + graph.n_pos           # tokens and logits, at the end
    node_influence = influence(normalize_matrix(adjacency), w)
    node_mask = np.array(node_influence >= find_threshold(node_influence, node_threshold))
    node_mask[-n_fixed:] = True
    keep = jnp.asarray(node_mask)
    pruned = jnp.where(keep[:, None] & keep[None, :], adjacency, 0.0)
    normalized = normalize_matrix(pruned)
    edge_scores = normalized * (influence(normalized, w) + w)[:, None]
    edge_mask = np.array(edge_scores >= find_threshold(edge_scores, edge_threshold))
    n_feat = graph.n_features

    def drop_dangling():  # feature and error nodes need outgoing edges, features incoming ones
        node_mask[:-n_fixed] &= edge_mask[:, :-n_fixed].any(0)
        node_mask[:n_feat] &= edge_mask[:n_feat].any(1)

    before = node_mask.copy()
    drop_dangling()
    while not (node_mask == before).all():  # each pass may leave new nodes dangling
        before[:] = node_mask
        edge_mask[~node_mask] = False
        edge_mask[:, ~node_mask] = False
        drop_dangling()
    order = np.argsort(-np.asarray(node_influence), kind="stable")
    ranked = np.asarray(node_influence)[order]
    cumulative = np.zeros(len(ranked), np.float32)
    cumulative[order] = np.cumsum(ranked) / ranked.sum()
    return PruneResult(node_mask, edge_mask, cumulative)


def graph_scores(graph: AttributionGraph) -> tuple[float, float]:
    """(replacement score, completeness score), circuit-tracer's `compute_graph_scores`: the
    share of token-to-logit influence that avoids error nodes, and the influence-weighted share
    of every node's input that comes from features and tokens rather than errors."""
    w = logit_weights(graph)
    A = normalize_matrix(jnp.asarray(graph.adjacency))
    node_influence = influence(A, w)
    err = slice(graph.n_features, graph.n_features + graph.n_layers * graph.n_pos)
    tok = slice(err.stop, err.stop + graph.n_pos)
    token_inf, error_inf = node_influence[tok].sum(), node_influence[err].sum()
    replacement = token_inf / (token_inf + error_inf)
    non_error = 1 - A[:, err].sum(-1)
    output = node_influence + w
    return float(replacement), float((non_error * output).sum() / output.sum())
