"""Attribution graphs on tiny random models: every edge equals the change in its target node's
input when its source node is ablated in the linearised replacement model (checked for every
edge, by forward runs rather than VJPs); the salient-logit rule."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jtlens.experiments.sparse.attribution import attribute, salient_logits
from jtlens.experiments.sparse.replacement import freeze, run_replacement, true_nodes
from tests.experiments.sparse.transcoder_fixtures import model, transcoders


def _target_inputs(params, cfg, tc, frozen, graph, acts, errors, embed):
    """Feature pre-activations (less b_enc) and demeaned target logits, by a plain forward."""
    logits, mlp_in, _ = run_replacement(params, cfg, tc, frozen, acts=acts, errors=errors,
                                        embed=embed)
    l, p, f = graph.active_features.T
    pre = (mlp_in[l, p] * tc.W_enc[l, :, f]).sum(-1)
    last = logits[-1]
    return jnp.concatenate([pre, last[graph.logit_tokens] - last.mean()])


@pytest.mark.slow
@pytest.mark.parametrize("name,kind,zero_positions", [("llama", "jumprelu_skip", 1),
                                                      ("gpt2", "clt", 0), ("llama", "topk", 1)])
def test_every_edge_is_the_ablation_effect(name, kind, zero_positions):
    cfg, params, tokens = model(name)
    tc = transcoders(cfg, kind)
    graph = attribute(params, cfg, tc, tokens, batch_size=48, zero_positions=zero_positions)
    frozen = freeze(params, cfg, tc, tokens)
    acts, errors = true_nodes(tc, frozen)
    embed = frozen.embed
    L, P = cfg.n_layers, len(tokens)
    n_feat = graph.n_features
    assert n_feat > 20 and len(graph.logit_tokens) >= 1
    assert not np.any(graph.active_features[:, 1] < zero_positions)
    # one ablated copy of the node values per source node: features, errors, tokens
    S = n_feat + L * P + P
    a = jnp.broadcast_to(acts, (S,) + acts.shape)
    e = jnp.broadcast_to(errors, (S,) + errors.shape)
    m = jnp.broadcast_to(embed, (S,) + embed.shape)
    l, p, f = graph.active_features.T
    a = a.at[np.arange(n_feat), l, p, f].set(0.0)
    el, ep = np.divmod(np.arange(L * P), P)
    e = e.at[n_feat + np.arange(L * P), el, ep].set(0.0)
    m = m.at[n_feat + L * P + np.arange(P), np.arange(P)].set(0.0)
    run = jax.jit(jax.vmap(lambda a, e, m: _target_inputs(params, cfg, tc, frozen, graph, a, e, m)))
    full = _target_inputs(params, cfg, tc, frozen, graph, acts, errors, embed)
    effect = np.array(full[None] - run(a, e, m)).T            # [targets, sources]
    targets = np.r_[np.arange(n_feat), np.arange(len(graph.logit_tokens)) - len(graph.logit_tokens)]
    got = graph.adjacency[targets][:, :S]
    # errors at the zero positions are not nodes: their columns are 0
    not_nodes = n_feat + (np.arange(L)[:, None] * P + np.arange(zero_positions)).ravel()
    effect[:, not_nodes] = 0.0
    np.testing.assert_allclose(got, effect, atol=2e-5 * max(1.0, np.abs(effect).max()))
    assert np.abs(effect).max() > 0.1
    # no edges into tokens or errors, none from logits; features only read earlier layers
    assert not graph.adjacency[n_feat:-len(graph.logit_tokens)].any()
    assert not graph.adjacency[:, S:].any()
    same_or_later = graph.active_features[:, None, 0] <= graph.active_features[None, :, 0]
    assert not graph.adjacency[:n_feat, :n_feat][same_or_later].any()


def test_salient_logits_rule():
    logits = np.log(np.array([0.5, 0.05, 0.3, 0.1, 0.05]))
    ids, probs = salient_logits(logits, max_n_logits=10, desired_logit_prob=0.85)
    assert ids.tolist() == [0, 2, 3] and np.allclose(probs, [0.5, 0.3, 0.1])
    ids, _ = salient_logits(logits, max_n_logits=2, desired_logit_prob=0.95)
    assert ids.tolist() == [0, 2]
    ids, _ = salient_logits(logits, desired_logit_prob=0.75)   # 0.5 + 0.3 passes 0.75
    assert ids.tolist() == [0, 2]


@pytest.mark.slow
def test_max_feature_nodes_keeps_the_full_graphs_rows():
    cfg, params, tokens = model("gpt2")
    tc = transcoders(cfg, "jumprelu_skip")
    full = attribute(params, cfg, tc, tokens, batch_size=16)
    part = attribute(params, cfg, tc, tokens, batch_size=16, max_feature_nodes=40, update_interval=1)
    assert full.n_features > 40 and part.n_features == 40
    rows = [int(np.flatnonzero((full.active_features == f).all(1))[0]) for f in part.active_features]
    n_full, n_part = full.n_features, part.n_features
    keep_cols = np.r_[rows, np.arange(n_full, full.adjacency.shape[0])]
    np.testing.assert_allclose(part.adjacency[:n_part], full.adjacency[rows][:, keep_cols], atol=1e-6)
    np.testing.assert_allclose(part.adjacency[n_part:], full.adjacency[n_full:][:, keep_cols], atol=1e-6)
    # the first pick is the features of highest direct influence on the logits
    logit_rows = np.abs(full.adjacency[-len(full.logit_tokens):, :n_full])
    direct = full.logit_probabilities @ (logit_rows / logit_rows.sum(1, keepdims=True).clip(1e-8))
    assert set(np.argsort(-direct)[:16]) <= set(rows)


def test_the_lean_program_for_long_prompts_gives_the_same_graph(monkeypatch):
    """Long prompts compile the VJP batches with XLA's lean options: the same edges."""
    from jtlens.experiments.sparse import attribution

    cfg, params, tokens = model("llama")
    tc = transcoders(cfg, "topk")
    plain = attribute(params, cfg, tc, tokens, batch_size=8, max_feature_nodes=20)
    monkeypatch.setattr(attribution, "LEAN_FROM_TOKENS", 1)
    lean = attribute(params, cfg, tc, tokens, batch_size=8, max_feature_nodes=20)
    assert attribution.lean_compiler_options()  # this jax knows them: the lean path ran
    np.testing.assert_array_equal(lean.active_features, plain.active_features)
    np.testing.assert_allclose(lean.edges, plain.edges, atol=1e-6)


SHARDED = """
import jax, numpy as np
assert len(jax.devices()) == 4
from jtlens.experiments.sparse.attribution import attribute
from jtlens.sharding import make_mesh
from tests.experiments.sparse.transcoder_fixtures import model, transcoders
cfg, params, tokens = model("llama")
tc = transcoders(cfg, "topk")
one = attribute(params, cfg, tc, tokens, batch_size=8)
mesh = make_mesh(data=4)
split = attribute(params, cfg, tc, tokens, batch_size=8, sharding=mesh)
assert np.array_equal(one.active_features, split.active_features)
np.testing.assert_allclose(split.edges, one.edges, atol=1e-5)
try:
    attribute(params, cfg, tc, tokens, batch_size=6, sharding=mesh)
except ValueError as e:
    assert "batch_size=6" in str(e) and "4 devices" in str(e), e
else:
    raise AssertionError("batch_size=6 over 4 devices was accepted")
print("SHARDED OK")
"""


@pytest.mark.slow
def test_rows_split_over_a_mesh_with_the_same_graph():
    from tests.io.test_sharding import run_on_host_devices

    assert "SHARDED OK" in run_on_host_devices(SHARDED, n=4, timeout=300)
