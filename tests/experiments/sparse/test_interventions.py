"""Feature interventions: a no-op edit gives the model's logits; ablating a last-layer feature
moves each target logit by exactly its attribution edge (nothing downstream to recompute);
the vmapped sweep equals one intervention at a time; steering adds."""

from __future__ import annotations

import numpy as np
import pytest

import jtlens
from jtlens.experiments.sparse.attribution import attribute
from jtlens.experiments.sparse.interventions import intervene, intervention_sweep
from jtlens.experiments.sparse.replacement import freeze, true_nodes
from tests.experiments.sparse.transcoder_fixtures import model, transcoders


@pytest.mark.slow
def test_ablations_match_edges_and_sweep_matches_loop():
    cfg, params, tokens = model("llama")
    tc = transcoders(cfg, "jumprelu_skip")
    frozen = freeze(params, cfg, tc, tokens)
    acts, _ = true_nodes(tc, frozen)
    graph = attribute(params, cfg, tc, tokens)
    last = np.flatnonzero((graph.active_features[:, 0] == cfg.n_layers - 1))[:6]
    assert len(last) >= 3
    sets = graph.active_features[last][:, None, :]                    # one feature per set
    logits = np.asarray(intervention_sweep(params, cfg, tc, frozen, sets, np.zeros((len(last), 1))))
    ids = graph.logit_tokens
    clean = np.asarray(frozen.logits[-1])
    demeaned = lambda x: x[..., ids] - x.mean(-1, keepdims=True)  # noqa: E731
    effect = demeaned(clean)[None] - demeaned(logits[:, -1])        # [sets, logits]
    edges = graph.adjacency[-len(ids):, last].T
    np.testing.assert_allclose(effect, edges, atol=1e-4)
    one = intervene(params, cfg, tc, frozen, sets[1], np.zeros(1))
    np.testing.assert_allclose(one, logits[1], atol=1e-5)
    # setting features to their own values, or padding rows, changes nothing
    f = graph.active_features[:2]
    same = intervene(params, cfg, tc, frozen, f, np.asarray(acts)[tuple(f.T)])
    np.testing.assert_allclose(same, jtlens.forward(params, tokens[None], cfg)[0], atol=1e-4)
    pad = intervention_sweep(params, cfg, tc, frozen, np.array([[[-1, 0, 0]]]), np.ones((1, 1)))
    np.testing.assert_allclose(pad[0], frozen.logits, atol=1e-4)
    # steering: adding to a feature equals setting it to its value plus the amount
    l, p, k = graph.active_features[last[0]]
    added = intervene(params, cfg, tc, frozen, graph.active_features[last[:1]], np.ones(1) * 2.0,
                      mode="add")
    put = intervene(params, cfg, tc, frozen, graph.active_features[last[:1]],
                    np.asarray([float(acts[l, p, k]) + 2.0]))
    np.testing.assert_allclose(added, put, atol=1e-5)
    assert not np.allclose(added, frozen.logits, atol=1e-3)


def test_bad_intervention_says_what_is_wrong(one_line_error):
    cfg, params, tokens = model("gpt2")
    tc = transcoders(cfg, "topk")
    frozen = freeze(params, cfg, tc, tokens)
    with pytest.raises(ValueError) as e:
        intervene(params, cfg, tc, frozen, np.zeros((2, 3), int), np.zeros(3))
    one_line_error(e, "one value per")
    with pytest.raises(ValueError) as e:
        intervene(params, cfg, tc, frozen, np.zeros((1, 3), int), np.zeros(1), mode="scale")
    one_line_error(e, "mode='scale'")
