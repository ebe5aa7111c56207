"""Training transcoders with the SAE trainer, every layer in one vmapped program: the stacked
step equals each layer trained alone; loss falls; the trained set decodes as it trained, and
drives the replacement model and an attribution graph."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jtlens.experiments.sparse.attribution import attribute
from jtlens.experiments.sparse.replacement import freeze, run_replacement
from jtlens.experiments.sparse.train import Hyper, TrainConfig, init_state, losses, train_step
from jtlens.experiments.sparse.transcoder_train import mlp_activations, to_transcoders
from tests.experiments.sparse.transcoder_fixtures import model


@pytest.mark.slow
@pytest.mark.parametrize("arch,skip", [("topk", True), ("jumprelu", False)])
def test_layers_train_in_one_program(arch, skip):
    cfg, params, _ = model("llama")
    tokens = jax.random.randint(jax.random.PRNGKey(5), (16, 8), 0, cfg.d_vocab)
    x, y = mlp_activations(params, cfg, tokens)
    assert x.shape == (cfg.n_layers, 128, cfg.d_model) == y.shape
    tc = TrainConfig(arch, d_in=cfg.d_model, d_sae=64, d_out=cfg.d_model, k_max=8,
                     total_steps=150, skip=skip)
    hyper = Hyper.stack([Hyper(lr=3e-3, k=8, l0_coefficient=1e-3)] * cfg.n_layers)
    state = init_state(tc, hyper, jax.random.PRNGKey(0))
    # layer 1 of the stacked step == layer 1 stepped alone
    one = jax.tree_util.tree_map(lambda a: a[1], state)
    one_hyper = jax.tree_util.tree_map(lambda a: a[1], hyper)
    stepped, _ = train_step(state, hyper, (x, y), tc)
    alone, _ = train_step(one, one_hyper, (x[1], y[1]), tc)
    for name in alone.params:
        np.testing.assert_allclose(stepped.params[name][1], alone.params[name], atol=1e-6)
    state = stepped
    first = None
    for _ in range(149):
        state, metrics = train_step(state, hyper, (x, y), tc)
        first = metrics["mse_loss"] if first is None else first
    assert np.all(np.asarray(metrics["mse_loss"]) < 0.5 * np.asarray(first))
    transcoders = to_transcoders(state, hyper, tc)
    assert transcoders.cfg.skip == skip and transcoders.cfg.activation == arch
    # the inference transcoders reconstruct what the training forward did
    _, (_, out, _) = losses(jax.tree_util.tree_map(lambda a: a[0], state.params),
                            jax.tree_util.tree_map(lambda a: a[0], hyper), x[0], tc, target=y[0])
    np.testing.assert_allclose(transcoders(x)[0], out, atol=1e-4)
    tokens = tokens[0]
    frozen = freeze(params, cfg, transcoders, tokens)
    logits, _, _ = run_replacement(params, cfg, transcoders, frozen)
    np.testing.assert_allclose(logits, frozen.logits, atol=1e-4)
    graph = attribute(params, cfg, transcoders, tokens)
    assert graph.n_features > 0 and np.isfinite(graph.adjacency).all()
