"""Differentiable component masks against TransformerLens: the same scalings applied with
run_with_hooks, mask gradients against retain_grad attribution, and a learned mask that finds
the heads planted in the weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.oracle import CONFIGS, max_diff, tl_model, to_jtlens, tokens_for, torch

from jtlens import masks

Z, POST = "blocks.*.attn.hook_z", "blocks.*.mlp.hook_post"


def logit_diff(logits):
    return (logits[:, -1, 3] - logits[:, -1, 5]).mean()


def _t(x):
    return torch.tensor(np.array(x))


def _tl_scaled(tl, tokens, scales, reference=None):
    """TransformerLens logits with act -> ref + m * (act - ref) per component at each hook."""
    reference = reference or {}

    def hook(template, layer):
        def f(act, hook):
            m = _t(scales[template][layer])
            m = m.reshape(m.shape + (1,) * (act.ndim - 2 - m.ndim))
            ref = reference[template][layer] if template in reference else 0.0
            return ref + m * (act - ref)
        return f

    fwd = [(f"blocks.{layer}.{t.split('*.')[1]}", hook(t, layer))
           for t in scales for layer in range(tl.cfg.n_layers)]
    with torch.no_grad():
        return tl.run_with_hooks(_t(tokens), fwd_hooks=fwd)


@pytest.fixture(scope="module")
def pair():
    tl = tl_model(CONFIGS["gpt2"])
    cfg, params = to_jtlens(tl)
    return tl, cfg, params, tokens_for(cfg, batch=2, pos=8)


def _mean_reference(tl, tokens):
    """Mean-ablation values from TransformerLens: each hook's mean over batch and positions."""
    with torch.no_grad():
        _, cache = tl.run_with_cache(_t(tokens))
    return {t: torch.stack([cache[f"blocks.{l}.{t.split('*.')[1]}"].mean((0, 1), keepdim=True)
                            for l in range(tl.cfg.n_layers)]) for t in (Z, POST)}


@pytest.mark.slow
def test_fractional_masks_equal_transformer_lens_scaled_hooks(pair):
    tl, cfg, params, tokens = pair
    rng = np.random.default_rng(0)
    scales = {Z: rng.uniform(size=(cfg.n_layers, cfg.n_heads)).astype(np.float32),
              POST: rng.uniform(size=(cfg.n_layers, cfg.d_mlp)).astype(np.float32)}
    reference = _mean_reference(tl, tokens)
    for ref in (None, reference):
        ours = masks.masked_metric(params, cfg, tokens, lambda logits: logits, scales,
                                   None if ref is None else {k: v.numpy() for k, v in ref.items()})
        assert max_diff(ours, _tl_scaled(tl, tokens, scales, ref)) <= 1e-4


@pytest.mark.slow
def test_mask_gradients_equal_retain_grad_attribution(pair):
    tl, cfg, params, tokens = pair
    reference = _mean_reference(tl, tokens)
    kept = {}

    def keep(act, hook):
        act.retain_grad()
        kept[hook.name] = act
        return act

    names = [f"blocks.{l}.{h}" for l in range(cfg.n_layers) for h in ("attn.hook_z", "mlp.hook_post")]
    logit_diff(tl.run_with_hooks(_t(tokens), fwd_hooks=[(n, keep) for n in names])).backward()
    # d metric / d m at m = 1 is sum over batch, positions (and d_head) of grad * (act - ref).
    expected = {t: np.stack([((kept[f"blocks.{l}.{t[9:]}"].grad * (kept[f"blocks.{l}.{t[9:]}"]
                                                                    - reference[t][l])).detach()
                              .sum((0, 1)).numpy()) for l in range(cfg.n_layers)]) for t in (Z, POST)}
    expected[Z] = expected[Z].sum(-1)
    grad_fn = jax.jit(masks.mask_gradients, static_argnames=("cfg", "metric", "names"))
    value, ours = grad_fn(params, cfg=cfg, tokens=tokens, metric=logit_diff, names=("z", "post"),
                          reference={k: v.numpy() for k, v in reference.items()})
    assert ours[Z].shape == (cfg.n_layers, cfg.n_heads) and ours[POST].shape == (cfg.n_layers, cfg.d_mlp)
    for t in (Z, POST):
        assert max_diff(ours[t], expected[t]) <= 1e-4, t


@pytest.mark.slow
def test_learn_mask_recovers_planted_heads():
    tl = tl_model(CONFIGS["gpt2"])
    planted = np.zeros((tl.cfg.n_layers, tl.cfg.n_heads), bool)
    planted[0, 1] = planted[1, 2] = True
    with torch.no_grad():  # the other heads write 50x less into the residual stream
        for layer, block in enumerate(tl.blocks):
            block.attn.W_O.mul_(_t(np.where(planted[layer], 3.0, 0.02))[:, None, None].float())
    cfg, params = to_jtlens(tl)
    tokens = tokens_for(cfg, batch=2, pos=8)
    learned, history = masks.learn_mask(params, cfg, tokens, logit_diff, ["z"], sparsity=0.05,
                                        steps=150)
    circuit = np.asarray(learned[Z]) > 0.5
    assert (circuit == planted).all()
    assert float(history["density"][-1]) == pytest.approx(planted.mean(), abs=0.01)
    full, ablated_all = (logit_diff(_tl_scaled(tl, tokens, {Z: np.full(planted.shape, v, np.float32)}))
                         .item() for v in (1.0, 0.0))
    kept = logit_diff(_tl_scaled(tl, tokens, {Z: circuit.astype(np.float32)})).item()
    assert abs(kept - full) <= 0.05 * abs(ablated_all - full)


def test_bad_masks_are_clear_errors(pair):
    _, cfg, params, tokens = pair
    with pytest.raises(ValueError, match="masks cover every layer"):
        masks.full_masks(params, cfg, tokens, ["blocks.0.attn.hook_z"])
    with pytest.raises(ValueError, match="mask heads at 'attn.hook_z'"):
        masks.full_masks(params, cfg, tokens, ["pattern"])
    with pytest.raises(ValueError, match="reference given for unmasked hooks"):
        masks.masked_metric(params, cfg, tokens, logit_diff, {Z: jnp.ones((2, 4))},
                            {POST: jnp.zeros((2, 1, 1, cfg.d_mlp))})
