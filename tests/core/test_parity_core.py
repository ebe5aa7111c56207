"""Every hook activation of the one forward equals TransformerLens 3.9's on the same weights."""

import jax
import numpy as np
import pytest

import jtlens
from tests.oracle import CONFIGS, assert_caches_match, max_diff, tl_cache, tl_model, to_jtlens, tokens_for

@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_hook_matches_transformerlens(name):
    model = tl_model(CONFIGS[name])
    cfg, params = to_jtlens(model)
    tokens = tokens_for(cfg)
    tl_logits, theirs = tl_cache(model, tokens)
    logits, ours = jax.jit(jtlens.forward_with_cache, static_argnames="cfg")(
        params, tokens, cfg=cfg, hooks=jtlens.Hooks(capture=True))
    assert max_diff(logits, tl_logits) <= 1e-4
    assert_caches_match(ours, theirs)


@pytest.mark.slow
def test_left_padding_matches_transformerlens():
    model = tl_model(CONFIGS["gpt2"])
    cfg, params = to_jtlens(model)
    tokens = tokens_for(cfg)
    mask = np.ones(tokens.shape, np.int64)
    mask[0, :3] = 0
    import torch
    tl_logits, theirs = tl_cache(model, tokens, attention_mask=torch.as_tensor(mask))
    logits, ours = jtlens.forward_with_cache(params, tokens, cfg, hooks=jtlens.Hooks(capture=True),
                                  attention_mask=mask)
    assert max_diff(logits, tl_logits) <= 1e-4
    assert_caches_match(ours, theirs)


@pytest.mark.slow
@pytest.mark.parametrize("flags", [dict(use_attn_in=True, use_split_qkv_input=False),
                                   dict(use_split_qkv_input=True)])
def test_split_input_hooks_patch_like_transformerlens(flags):
    """Editing hook_attn_in / hook_k_input changes only what TransformerLens changes."""
    import torch

    model = tl_model(dict(CONFIGS["gpt2"], **flags))
    cfg, params = to_jtlens(model)
    tokens = tokens_for(cfg)
    name = "blocks.1.hook_k_input" if flags.get("use_split_qkv_input") else "blocks.1.hook_attn_in"

    def bump(x, hook):
        return x.at[:, :, 2].multiply(3.0) if hasattr(x, "at") else torch.cat(
            [x[:, :, :2], 3.0 * x[:, :, 2:3], x[:, :, 3:]], dim=2)

    with torch.no_grad():
        ref = model.run_with_hooks(torch.as_tensor(np.asarray(tokens)), fwd_hooks=[(name, bump)]).numpy()
    ours = jtlens.forward(params, tokens, cfg, hooks=jtlens.Hooks(fns={name: bump}))
    assert max_diff(ours, ref) <= 1e-4
    # ...and on a plain config the same edit switches the split path on by itself
    plain = cfg.replace(use_attn_in=False, use_split_qkv_input=False)
    assert max_diff(jtlens.forward(params, tokens, plain, hooks=jtlens.Hooks(fns={name: bump})), ref) <= 1e-4
