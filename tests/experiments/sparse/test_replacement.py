"""The replacement model on tiny random models: its logits equal the model's on the prompt (the
error term makes it exact), in both modes; an edit propagates; patterns stay frozen."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import jtlens
from jtlens.experiments.sparse.replacement import freeze, run_replacement, true_nodes
from tests.experiments.sparse.transcoder_fixtures import model, transcoders


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def subject(request):
    return model(request.param)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["jumprelu_skip", "clt", "topk"])
def test_replacement_logits_equal_the_models(subject, kind):
    cfg, params, tokens = subject
    tc = transcoders(cfg, kind)
    frozen = freeze(params, cfg, tc, tokens)
    want = np.asarray(jtlens.forward(params, tokens[None], cfg)[0])
    np.testing.assert_allclose(frozen.logits, want, atol=1e-5)
    acts, errors = true_nodes(tc, frozen)
    assert 0 < float((acts > 0).mean()) < 0.9  # features fire, sparsely
    logits, mlp_in, used = run_replacement(params, cfg, tc, frozen)  # features recomputed
    np.testing.assert_allclose(logits, want, atol=1e-4)
    np.testing.assert_allclose(mlp_in, frozen.mlp_in, atol=1e-5)
    np.testing.assert_allclose(used, acts, atol=1e-5)
    logits, _, _ = run_replacement(params, cfg, tc, frozen, acts=acts, errors=errors)  # linear
    np.testing.assert_allclose(logits, want, atol=1e-4)


@pytest.mark.slow
def test_edits_propagate_and_freezing_matters(subject):
    cfg, params, tokens = subject
    tc = transcoders(cfg, "jumprelu_skip")
    frozen = freeze(params, cfg, tc, tokens)
    acts, _ = true_nodes(tc, frozen)
    f = int(jnp.argmax(acts[0, -1]))
    ablate = lambda layer, a: a.at[-1, f].set(0.0) if layer == 0 else a  # noqa: E731
    _, _, used = run_replacement(params, cfg, tc, frozen, edit=ablate)
    assert float(used[0, -1, f]) == 0.0
    assert not np.allclose(used[1], acts[1])  # layer 1 recomputed from the edited stream
    ablate_early = lambda layer, a: a.at[0].set(0.0) if layer == 0 else a  # noqa: E731
    held, _, _ = run_replacement(params, cfg, tc, frozen, edit=ablate_early)
    free, _, _ = run_replacement(params, cfg, tc, frozen, edit=ablate_early, freeze=False)
    assert not np.allclose(held, free, atol=1e-5)  # later positions read position 0 by attention


@pytest.mark.slow  # builds the hook catalogue (traces the model)
def test_missing_hooks_and_layers_are_named(one_line_error):
    cfg, params, tokens = model("gpt2")
    tc = transcoders(cfg, "topk")
    bad = type(tc)(tc.params, tc.cfg.replace(input_hook="mlp.hook_nothing"))
    with pytest.raises(ValueError) as e:
        freeze(params, cfg, bad, tokens)
    one_line_error(e, "no hook blocks.L.mlp.hook_nothing")
    short = type(tc)({k: v[:1] for k, v in tc.params.items()}, tc.cfg.replace(n_layers=1))
    with pytest.raises(ValueError) as e:
        freeze(params, cfg, short, tokens)
    one_line_error(e, "1 transcoder layers for a 2-layer model")
