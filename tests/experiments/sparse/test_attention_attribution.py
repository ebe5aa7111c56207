"""Attention attribution on tiny random models: the score is the model's, and each side's
contribution of every node is exactly the score's change when that node is ablated on that side
only (the other side, attention patterns and norm scales patched at their values), checked for
every node by forward runs."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jtlens
from jtlens.core.hooks import Hooks
from jtlens.experiments.sparse.attention_scores import HELD, _held_values, attention_attribution
from jtlens.experiments.sparse.attribution import _linear, _nodes, _run_prompt
from jtlens.experiments.sparse.replacement import freeze
from tests.experiments.sparse.transcoder_fixtures import model, transcoders


@pytest.mark.slow
@pytest.mark.parametrize("name,kind", [("llama", "topk"), ("gpt2", "clt")])
def test_each_side_is_the_one_sided_ablation_effect(name, kind):
    cfg, params, tokens = model(name)
    tc = transcoders(cfg, kind)
    layer, head, q, k = 1, 2, 6, 3
    qk = attention_attribution(params, cfg, tc, tokens, layer, head, q, k)
    _, cache = jtlens.forward_with_cache(params, tokens[None], cfg,
                                         Hooks(capture=f"blocks.{layer}.attn.hook_attn_scores"))
    np.testing.assert_allclose(qk.score, cache[f"blocks.{layer}.attn.hook_attn_scores"][0, head, q, k],
                               atol=1e-5)
    mlp_in, mlp_out, last = _run_prompt(params, cfg, tc, tokens)
    nodes, index, _ = _nodes(tc, np.asarray(tokens), mlp_in, mlp_out, 1,
                             jnp.zeros((last.shape[0], 1)))
    assert np.array_equal(index, qk.active_features) and len(index) > 10
    L, M = nodes.value.shape
    P = len(tokens)
    slots = np.asarray(nodes.slots)
    n_src = len(index) + L * P + P
    score = jnp.asarray([layer, head, q, k])
    frozen = freeze(params, cfg, tc, tokens)
    prompt_values = _held_values(params, cfg, tokens)
    for side, got in (("query", qk.query_side), ("key", qk.key_side)):
        held_hook = HELD[side]
        # patterns and norm scales patched at their values too, so that an ablation moves
        # nothing but the linear model's (they are stop_gradient-ed, which a forward ignores)
        held = {**{n: (v, None) for n, v in frozen.patched.items() if n.startswith("blocks.")},
                f"blocks.*.{held_hook}": (prompt_values[held_hook], None)}

        @jax.jit
        @functools.partial(jax.vmap)
        def run(c_feat, c_err, c_tok):
            reads, _ = _linear(params, cfg, tc, nodes, (c_feat, c_err, c_tok),
                               jnp.full((3, 1), -1), L, score=score, held=held)
            return reads[0]

        # one ablated copy of the coefficients per source node (errors at position 0 included:
        # they are not nodes, and their columns must be 0)
        c_feat = np.ones((n_src, L * M))
        c_feat[np.arange(len(index)), slots] = 0.0
        c_err = np.ones((n_src, L * P))
        c_err[len(index) + np.arange(L * P), np.arange(L * P)] = 0.0
        c_tok = np.ones((n_src, P))
        c_tok[len(index) + L * P + np.arange(P), np.arange(P)] = 0.0
        full = run(jnp.ones((1, L, M)), jnp.ones((1, L, P)), jnp.ones((1, P)))[0]
        np.testing.assert_allclose(full, qk.score, atol=1e-5)
        effect = np.array(full - run(jnp.asarray(c_feat.reshape(-1, L, M)),
                                     jnp.asarray(c_err.reshape(-1, L, P)), jnp.asarray(c_tok)))
        effect[len(index) + np.arange(L) * P] = 0.0          # errors at position 0: not nodes
        np.testing.assert_allclose(got, effect, atol=2e-5 * max(1.0, np.abs(effect).max()))
        assert np.abs(effect).max() > 0.05, side
        # only what reaches the query (key) position, before the score's layer, contributes
        pos = q if side == "query" else k
        feat_pos, feat_layer = index[:, 1], index[:, 0]
        assert not got[:len(index)][(feat_pos > pos) | (feat_layer >= layer)].any()
    assert qk.top("key", 3)[0][1] == qk.key_side[np.argmax(np.abs(qk.key_side))]


def test_bad_edges_are_one_line_errors():
    cfg, params, tokens = model("llama")
    tc = transcoders(cfg, "topk")
    with pytest.raises(ValueError, match="key_pos=7"):
        attention_attribution(params, cfg, tc, tokens, 1, 0, 5, 7)
    with pytest.raises(ValueError, match="head=9"):
        attention_attribution(params, cfg, tc, tokens, 1, 9, 5, 2)
