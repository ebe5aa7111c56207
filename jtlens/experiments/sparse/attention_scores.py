"""Attention attribution: one attention score split over an attribution graph's source nodes,
through its query and through its key (circuit-tracer treats attention as given; its issue #53).

    qk = attention_attribution(params, cfg, tc, tokens, layer=3, head=1, query_pos=9, key_pos=4)
    qk.query_side, qk.key_side       # [n_sources] each: features, errors, tokens (graph columns)

The score (`blocks.{layer}.attn.hook_attn_scores[head, query_pos, key_pos]`, before the softmax)
is the query dotted with the key, and in the linear replacement model (`attribution`) each is
linear in the node coefficients, so the score is bilinear in them. `query_side[i]` is what node i
adds to the score through the query with every key held at its value on the prompt (a patch of
`attn.hook_k`), `key_side[i]` the same through the key with the queries held: each is one VJP
row of the same machinery as the graph's edges, and exactly the score's change when node i is
ablated on that side only. What a side's nodes do not explain is its bias terms' (b_Q or b_K,
b_dec, b_O and other biases that reach the residual stream).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jtlens.core.config import Config
from jtlens.core.forward import forward_with_cache
from jtlens.core.hooks import Hooks
from jtlens.experiments.sparse.attribution import (_linear, _nodes, _run_prompt, _source_columns,
                                                    locate)
from jtlens.experiments.sparse.replacement import check_hooks
from jtlens.experiments.sparse.transcoder import Transcoders


@dataclasses.dataclass
class AttentionAttribution:
    """One attention score (layer, head, query_pos, key_pos) split over the source nodes: node
    features (`active_features`, as `attribute` lists them with no feature budget), one error
    per (layer, pos) (layer-major), the token embeddings."""

    score: float
    query_side: np.ndarray        # [n_sources]
    key_side: np.ndarray          # [n_sources]
    active_features: np.ndarray   # [n_features, 3] (layer, pos, feature)
    tokens: np.ndarray            # [pos]
    n_layers: int

    def top(self, side: str = "query", k: int = 10) -> list[tuple[str, float]]:
        """The k sources of largest |contribution| on `side`, as (label, value): "L3 f17 @5",
        "L3 error @5", "token 42 @5"."""
        values = {"query": self.query_side, "key": self.key_side}[side]
        labels = []
        for i in np.argsort(-np.abs(values), kind="stable")[:k]:
            kind, layer, pos, item = locate(i, self.active_features, self.n_layers, len(self.tokens))
            name = {"feature": f"L{layer} f{item}", "error": f"L{layer} error",
                    "token": f"token {int(self.tokens[pos])}"}[kind]
            labels.append((f"{name} @{pos}", float(values[i])))
        return labels


HELD = {"query": "attn.hook_k", "key": "attn.hook_q"}  # a side's score holds the other side


@functools.partial(jax.jit, static_argnames=("cfg",))
def _held_values(params, cfg: Config, tokens) -> dict:
    """{hook: its activations on the prompt, stacked [L, 1, pos, heads, d_head]} for both held
    hooks, from one forward."""
    _, cache = forward_with_cache(params, tokens[None], cfg,
                                  Hooks(capture=[f"blocks.*.{h}" for h in HELD.values()]),
                                  stop_at_layer=cfg.n_layers)
    return {h: cache.stacked[h] for h in HELD.values()}


@functools.partial(jax.jit, static_argnames=("cfg", "held_hook"))
def _score_row(params, cfg: Config, tc: Transcoders, nodes, score, held_hook: str, held_value):
    """(the score's row [n_sources] with `held_hook` patched to `held_value`, the score)."""
    L, M = nodes.value.shape
    P = len(nodes.tokens)
    coef = (jnp.ones((L, M)), jnp.ones((L, P)), jnp.ones(P))
    none = jnp.full((3, 1), -1, jnp.int32)
    f = functools.partial(_linear, params, cfg, tc, nodes, targets=none, stop=score[0] + 1,
                          score=score, held={f"blocks.*.{held_hook}": (held_value, None)})
    (reads, logits), vjp_fn = jax.vjp(f, coef)
    g = vjp_fn((jnp.ones_like(reads), jnp.zeros_like(logits)))[0]
    return _source_columns(nodes, *(x[None] for x in g))[0], reads[0]


def attention_attribution(params, cfg: Config, tc: Transcoders, tokens, layer: int, head: int,
                          query_pos: int, key_pos: int, *,
                          zero_positions: int = 1) -> AttentionAttribution:
    """Split the attention score of `head` at `layer` from `query_pos` to `key_pos` over the
    source nodes of the prompt `tokens` [pos] (see the module doc). zero_positions: leading
    positions whose features and errors are not nodes, as in `attribute`."""
    check_hooks(cfg, tc)
    tokens = jnp.asarray(tokens).reshape(-1)
    P = len(tokens)
    for name, value, limit in (("layer", layer, cfg.n_layers), ("head", head, cfg.n_heads),
                               ("query_pos", query_pos, P)):
        if not 0 <= value < limit:
            raise ValueError(f"{name}={value} is out of range: this model and prompt have "
                             f"0..{limit - 1}")
    if not 0 <= key_pos <= query_pos:
        raise ValueError(f"key_pos={key_pos}: a query attends to keys at or before it (0.."
                         f"{query_pos} for query_pos={query_pos})")
    mlp_in, mlp_out, last = _run_prompt(params, cfg, tc, tokens)
    nodes, index, _ = _nodes(tc, np.asarray(tokens), mlp_in, mlp_out, zero_positions,
                             jnp.zeros((last.shape[0], 1), jnp.float32))
    score = jnp.asarray([layer, head, query_pos, key_pos], jnp.int32)
    held, sides = _held_values(params, cfg, tokens), {}
    for side, held_hook in HELD.items():
        row, value = _score_row(params, cfg, tc, nodes, score, held_hook, held[held_hook])
        sides[side] = np.asarray(row)
    return AttentionAttribution(float(value), sides["query"], sides["key"], index,
                                np.asarray(tokens), cfg.n_layers)
