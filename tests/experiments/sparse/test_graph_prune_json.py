"""Pruning a hand-built attribution graph against circuit-tracer's formulas written out in numpy
(influence by a matrix inverse rather than the series), its graph JSON (circuit-tracer's field
names and node ids), and the features' labels (output tokens, top activations) by hand."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

import jtlens
from jtlens.core.hooks import Hooks
from jtlens.experiments.sparse.attribution import AttributionGraph
from jtlens.experiments.sparse.graph_files import graph_json, write_graph_json
from jtlens.experiments.sparse.graph_prune import graph_scores, prune_graph

L, P = 2, 3
# layer-0 features numbered >= L: circuit-tracer's ids "0_{feature}_{pos}" and error ids
# "0_{layer}_{pos}" coincide otherwise (its scheme, kept as is)
FEATURES = np.array([[0, 1, 3], [0, 2, 2], [0, 2, 4], [1, 1, 2], [1, 2, 0], [1, 2, 5]])
N_FEAT, N_LOGIT = len(FEATURES), 2
N = N_FEAT + L * P + P + N_LOGIT


@pytest.fixture(scope="module")
def graph():
    rng = np.random.default_rng(7)
    adj = np.zeros((N, N), np.float32)
    sources = N - N_LOGIT
    for t in range(N_FEAT):  # a feature reads earlier-layer features, errors and tokens
        for s in range(sources):
            earlier = s >= N_FEAT or FEATURES[s, 0] < FEATURES[t, 0]
            if s >= N_FEAT and s < N_FEAT + L * P:
                earlier = (s - N_FEAT) // P < FEATURES[t, 0]
            if earlier and rng.random() < 0.7:
                adj[t, s] = rng.standard_normal() * rng.choice([0.01, 1.0])
    adj[N - N_LOGIT:, :sources] = rng.standard_normal((N_LOGIT, sources)) * rng.choice(
        [0.01, 1.0], (N_LOGIT, sources))
    return AttributionGraph(tokens=np.array([11, 5, 9]), active_features=FEATURES,
                            activation_values=np.abs(rng.standard_normal(N_FEAT)).astype(np.float32),
                            logit_tokens=np.array([4, 8]), logit_probabilities=np.array([0.6, 0.3], np.float32),
                            edges=np.concatenate([adj[:N_FEAT], adj[sources:]])[:, :sources],
                            n_layers=L, scan="test-scan")


def _threshold(scores, fraction):
    s = np.sort(scores.ravel())[::-1]
    total, run = s.sum(), 0.0
    for i, x in enumerate(s):
        run += x
        if run / total >= fraction:
            return s[i]
    return s[-1]


def _expected(adj, probs, node_t, edge_t):
    """circuit-tracer's prune_graph, written out: influence = w @ ((I - A)^-1 - I)."""
    n = len(adj)
    w = np.zeros(n)
    w[-N_LOGIT:] = probs

    def norm(m):
        a = np.abs(m).astype(np.float64)
        return a / np.maximum(a.sum(1, keepdims=True), 1e-10)

    def infl(a):
        return w @ (np.linalg.inv(np.eye(n) - a) - np.eye(n))

    node_inf = infl(norm(adj))
    keep = node_inf >= _threshold(node_inf, node_t)
    fixed = N_LOGIT + P
    keep[-fixed:] = True
    pruned = adj * keep[:, None] * keep[None, :]
    a = norm(pruned)
    scores = a * (infl(a) + w)[:, None]
    edges = scores >= _threshold(scores, edge_t)
    while True:
        old = keep.copy()
        for j in range(n - fixed):
            keep[j] &= edges[:, j].any()
        for j in range(N_FEAT):
            keep[j] &= edges[j].any()
        if (keep == old).all():
            break
        edges[~keep] = False
        edges[:, ~keep] = False
    order = np.argsort(-node_inf)
    cum = np.empty(n)
    cum[order] = np.cumsum(node_inf[order]) / node_inf.sum()
    return keep, edges, cum, node_inf


@pytest.mark.parametrize("node_t,edge_t", [(0.8, 0.98), (0.5, 0.9), (1.0, 1.0)])
def test_pruning_follows_circuit_tracer(graph, node_t, edge_t):
    keep, edges, cum, _ = _expected(graph.adjacency, graph.logit_probabilities, node_t, edge_t)
    got = prune_graph(graph, node_t, edge_t)
    np.testing.assert_array_equal(got.node_mask, keep)
    rows = np.r_[np.arange(N_FEAT), np.arange(N - N_LOGIT, N)]  # the nodes with inputs
    np.testing.assert_array_equal(got.edge_mask, edges[rows][:, :N - N_LOGIT])
    if edge_t < 1:  # (at 1.0 every entry, zeros too, reaches the threshold)
        assert not np.delete(edges, rows, axis=0).any() and not edges[:, N - N_LOGIT:].any()
    np.testing.assert_allclose(got.cumulative_scores, cum, atol=1e-5)
    if node_t < 1:
        assert 0 < keep[:N_FEAT].sum() < N_FEAT  # the case prunes some features, not all


def test_graph_scores_follow_circuit_tracer(graph):
    *_, node_inf = _expected(graph.adjacency, graph.logit_probabilities, 0.8, 0.98)
    err = slice(N_FEAT, N_FEAT + L * P)
    tok = slice(err.stop, err.stop + P)
    a = np.abs(graph.adjacency.astype(np.float64))
    a = a / np.maximum(a.sum(1, keepdims=True), 1e-10)
    w = np.zeros(N)
    w[-N_LOGIT:] = graph.logit_probabilities
    replacement = node_inf[tok].sum() / (node_inf[tok].sum() + node_inf[err].sum())
    out = node_inf + w
    completeness = ((1 - a[:, err].sum(1)) * out).sum() / out.sum()
    np.testing.assert_allclose(graph_scores(graph), (replacement, completeness), rtol=1e-5)


NODE_FIELDS = ["node_id", "feature", "layer", "ctx_idx", "feature_type", "token_prob",
               "is_target_logit", "run_idx", "reverse_ctx_idx", "jsNodeId", "clerp", "influence",
               "activation"]  # circuit_tracer/frontend/graph_models.py's Node


def test_graph_json_schema_and_ids(graph, tmp_path):
    data = graph_json(graph, "demo", decode=lambda t: f"<{t}>", node_threshold=0.8)
    assert list(data) == ["metadata", "qParams", "nodes", "links"]
    assert data["metadata"] == {"slug": "demo", "scan": "test-scan", "transcoder_list": [],
                                "prompt_tokens": ["<11>", "<5>", "<9>"], "prompt": "<11><5><9>",
                                "node_threshold": 0.8, "schema_version": 1}
    assert data["qParams"] == {"pinnedIds": [], "supernodes": [], "linkType": "both",
                               "clickedId": "", "sg_pos": ""}
    by_id = {n["node_id"]: n for n in data["nodes"]}
    assert all(list(n) == NODE_FIELDS for n in data["nodes"])
    # tokens and logits are always there, with circuit-tracer's ids
    assert {"E_11_0", "E_5_1", "E_9_2"} <= set(by_id)
    assert by_id["3_4_2"]["feature_type"] == "logit" and by_id["3_4_2"]["is_target_logit"]
    assert by_id["3_8_2"]["clerp"] == 'Output "<8>" (p=0.300)' and by_id["3_8_2"]["jsNodeId"] == "L_8-2"
    keep = prune_graph(graph).node_mask
    ids = [f"{l}_{f}_{p}" for l, p, f in FEATURES] + [f"0_{l}_{p}" for l in range(L) for p in range(P)]
    for i, node_id in enumerate(ids):
        if node_id in by_id:
            assert keep[i]
            kind = "cross layer transcoder" if i < N_FEAT else "mlp reconstruction error"
            assert by_id[node_id]["feature_type"] == kind
    index = {n: i for i, n in enumerate(ids + ["E_11_0", "E_5_1", "E_9_2", "3_4_2", "3_8_2"])}
    assert data["links"]
    for link in data["links"]:
        assert link["source"] in by_id and link["target"] in by_id
        assert link["weight"] == pytest.approx(float(graph.adjacency[index[link["target"]],
                                                                     index[link["source"]]]))
    f = by_id.get("1_2_1")
    if f is not None:
        assert f["feature"] == (1 + 2) * (1 + 2 + 1) // 2 + 2 and f["jsNodeId"] == "1_2-0"
    path = write_graph_json(graph, tmp_path, "demo")
    assert json.loads(path.read_text())["metadata"]["slug"] == "demo"
    write_graph_json(graph, tmp_path, "demo")
    assert [g["slug"] for g in json.loads((tmp_path / "graph-metadata.json").read_text())["graphs"]] == ["demo"]


@pytest.mark.parametrize("kind", ["topk", "clt"])
def test_output_token_labels_name_the_tokens_a_feature_raises(kind):
    from jtlens.experiments.sparse.attribution import attribute
    from jtlens.experiments.sparse.graph_files import output_token_labels
    from tests.experiments.sparse.transcoder_fixtures import model, transcoders

    cfg, params, tokens = model("llama")
    tc = transcoders(cfg, kind)
    g = attribute(params, cfg, tc, tokens, batch_size=16, max_feature_nodes=12)
    labels = output_token_labels(g, params, cfg, tc, decode=lambda t: f"t{t}", k=2)
    assert sorted(labels) == list(range(12))
    W_dec, w = np.asarray(tc.W_dec), np.asarray(params["ln_final"]["w"])
    for i, (layer, _, f) in enumerate(g.active_features):
        row = W_dec[layer, f].sum(0) if kind == "clt" else W_dec[layer, f]
        top = np.argsort(-((row * w) @ np.asarray(params["unembed"]["W_U"])))[:2]
        assert labels[i] == f'out: "t{top[0]}" "t{top[1]}"'
    data = graph_json(g, "x", scan="s", labels=labels, node_threshold=1.0)
    kept = [n for n in data["nodes"] if n["feature_type"] == "cross layer transcoder"]
    assert kept and all(n["clerp"].startswith("out: ") for n in kept)


def test_top_activation_labels_find_each_features_largest_activations():
    import jax

    from jtlens.experiments.sparse.attribution import attribute
    from jtlens.experiments.sparse.graph_files import top_activation_labels, transcoder_feature_acts
    from tests.experiments.sparse.transcoder_fixtures import model, transcoders

    cfg, params, tokens = model("llama")
    tc = transcoders(cfg, "topk")
    g = attribute(params, cfg, tc, tokens, batch_size=16, max_feature_nodes=6)
    windows = np.array(jax.random.randint(jax.random.PRNGKey(9), (10, 8), 1, cfg.d_vocab))
    windows[:, 0] = 0                                                   # a BOS, ignored
    # by hand: every layer's full encoding of the MLP inputs, read at each graph feature
    _, cache = jtlens.forward_with_cache(params, jnp.asarray(windows), cfg,
                                         Hooks(capture="blocks.*.ln2.hook_normalized"))
    every = np.asarray(tc.encode(cache.stacked["ln2.hook_normalized"]))   # [L, n, P, d_tc]
    feats = jnp.asarray(g.active_features[:, [0, 2]])
    got = np.asarray(transcoder_feature_acts(params, jnp.asarray(windows[:4]), cfg, tc, feats))
    np.testing.assert_allclose(got, every[feats[:, 0], :4, :, feats[:, 1]].transpose(1, 2, 0), atol=1e-5)
    labels = top_activation_labels(g, params, cfg, tc, windows, decode=lambda t: f"<{t}>", k=2,
                                   left=1, ignore_token=0, batch_size=4)
    for i, (layer, _, f) in enumerate(g.active_features):
        acts = every[layer, :, :, f].copy()
        acts[:, 0] = 0.0
        w, p = np.unravel_index(np.argmax(acts), acts.shape)
        best = f"<{windows[w, p - 1]}>[<{windows[w, p]}>] {acts[w, p]:.2f}"
        assert labels[i].startswith("top: " + best), (labels[i], best)
    with pytest.raises(ValueError, match=r"windows: shape \(80,\), expected \[n_windows, "
                                         r"positions\]; cut a token stream .* context_windows"):
        top_activation_labels(g, params, cfg, tc, windows.ravel(), decode=str)


def test_locate_names_every_node_in_graph_order():
    g = AttributionGraph(np.array([5, 6, 7]), np.array([[0, 1, 4], [1, 2, 9]]), np.ones(2),
                         np.array([11, 12]), np.array([0.6, 0.3]), np.zeros((4, 11)), n_layers=2)
    got = [g.locate(i) for i in range(13)]
    assert got == [("feature", 0, 1, 4), ("feature", 1, 2, 9),
                   *[("error", layer, pos, -1) for layer in range(2) for pos in range(3)],
                   ("token", -1, 0, 0), ("token", -1, 1, 1), ("token", -1, 2, 2),
                   ("logit", 2, 2, 0), ("logit", 2, 2, 1)]
    assert [kind for kind, *_ in got] == g.node_kinds().tolist()
