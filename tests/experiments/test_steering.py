"""Activation addition (ActAdd) equals the same steering done with TransformerLens hooks."""

import jax.numpy as jnp
import numpy as np
import pytest

from tests.oracle import CONFIGS, max_diff, tl_model, to_jtlens, tokens_for, torch

import jtlens
from jtlens import steering

NAME = "blocks.1.hook_resid_pre"


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def pair(request):
    tl = tl_model(CONFIGS[request.param])
    return (tl,) + to_jtlens(tl)


@pytest.mark.slow
def test_activation_addition_equals_transformer_lens_hooks(pair):
    tl, cfg, params = pair
    plus, minus = tokens_for(cfg, batch=2, pos=4, seed=3)
    tokens = tokens_for(cfg, batch=2, pos=9)
    vector = steering.prompt_difference(params, cfg, plus, minus, NAME, coeff=4.0)
    ours = jtlens.forward(params, tokens, cfg, steering.add_at_start(vector, NAME))

    with torch.no_grad():
        _, cache = tl.run_with_cache(torch.tensor(np.stack([plus, minus])))
        diff = 4.0 * (cache[NAME][0] - cache[NAME][1])

        def add(act, hook):
            act[:, :4] += diff
            return act
        theirs = tl.run_with_hooks(torch.tensor(np.array(tokens)), fwd_hooks=[(NAME, add)])
        plain = tl(torch.tensor(np.array(tokens)))
    assert max_diff(vector, diff) <= 1e-4
    assert max_diff(ours, theirs) <= 1e-4
    assert max_diff(theirs, plain) > 1e-2  # the steering changed the output


def test_bad_steering_requests_are_clear_errors(pair):
    _, cfg, params = pair
    with pytest.raises(ValueError, match="pad the shorter one"):
        steering.prompt_difference(params, cfg, jnp.arange(3), jnp.arange(4), NAME)
    with pytest.raises(ValueError, match="one concrete hook"):
        steering.prompt_difference(params, cfg, jnp.arange(3), jnp.arange(3), "resid_pre")
    with pytest.raises(ValueError, match="use a longer prompt"):
        jtlens.forward(params, jnp.arange(2)[None], cfg,
                       steering.add_at_start(jnp.ones((3, cfg.d_model)), NAME))
