"""`jax.grad` of the plain forward with respect to params equals TransformerLens's `.grad`
after `loss.backward()`, on the same weights, for every parameter (under jit)."""

import jax
import numpy as np
import pytest

from jtlens.conversions.transformer_lens import params_from_state_dict
from tests.oracle import CONFIGS, max_diff, tl_model, to_jtlens, tokens_for, torch

import jtlens


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gpt2", "llama", "neox"])
def test_loss_gradients_equal_transformer_lens_backward(name):
    tl = tl_model(CONFIGS[name])
    cfg, params = to_jtlens(tl)
    tokens = tokens_for(cfg, batch=2, pos=8)
    tl.zero_grad()
    tl(torch.tensor(np.array(tokens)), return_type="loss").backward()
    # The state-dict -> params conversion only stacks and reshapes, so it maps TL's gradients
    # onto the params layout as it maps the weights.
    theirs = params_from_state_dict({k: p.grad for k, p in tl.named_parameters()}, cfg)
    loss = lambda p: jtlens.forward(p, tokens, cfg, return_type="loss")  # noqa: E731
    ours = jax.jit(jax.grad(loss))(params)
    flat_ours = jax.tree_util.tree_flatten_with_path(ours)[0]
    flat_theirs = jax.tree_util.tree_leaves(theirs)
    assert len(flat_ours) == len(flat_theirs) > 10
    for (path, g), ref in zip(flat_ours, flat_theirs):
        assert np.abs(ref).max() > 0, jax.tree_util.keystr(path)  # every weight is exercised
        assert max_diff(g, ref) <= 1e-5 * max(1.0, float(np.abs(ref).max())), jax.tree_util.keystr(path)
