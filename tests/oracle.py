"""TransformerLens 3.9 as the oracle: build HookedTransformers offline and compare caches."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tl = pytest.importorskip("transformer_lens")

import jax.numpy as jnp  # noqa: E402

from jtlens.conversions.transformer_lens import config_from_tl, params_from_state_dict  # noqa: E402


def tl_model(cfg_dict: dict, seed: int = 0):
    """A randomly initialised TransformerLens HookedTransformer (no tokenizer, no hub)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(seed)
    cfg = HookedTransformerConfig(**cfg_dict, device="cpu", seed=seed)
    model = HookedTransformer(cfg, move_to_device=False).eval()
    # TL zero-initialises biases and unit-initialises norms; randomise them so they are tested.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith((".b", "b_Q", "b_K", "b_V", "b_O", "b_in", "b_out", "b_U", ".w")):
                p.add_(0.1 * torch.randn_like(p))
    return model


def to_jtlens(model):
    cfg = config_from_tl(model.cfg)
    return cfg, params_from_state_dict(model.state_dict(), cfg)


def tl_cache(model, tokens, **kw):
    with torch.no_grad():
        logits, cache = model.run_with_cache(torch.as_tensor(np.asarray(tokens)), **kw)
    return logits.numpy(), {k: v.numpy() for k, v in cache.items()}


def max_diff(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, f"shape {a.shape} != {b.shape}"
    finite = np.isfinite(a) & np.isfinite(b)
    assert (np.isfinite(a) == np.isfinite(b)).all(), "masked (-inf) entries differ"
    return float(np.abs(a - b)[finite].max()) if finite.any() else 0.0


def assert_caches_match(ours, theirs: dict, atol: float = 1e-4):
    """Every TransformerLens activation exists in ours under the same name and matches."""
    assert set(ours.keys()) == set(theirs), (
        f"hook names differ: only TL {sorted(set(theirs) - set(ours.keys()))[:8]}, "
        f"only jtlens {sorted(set(ours.keys()) - set(theirs))[:8]}")
    worst = {k: max_diff(ours[k], theirs[k]) for k in theirs}
    bad = {k: v for k, v in worst.items() if v > atol}
    assert not bad, f"activations differ from TransformerLens: {bad}"
    return worst


def tokens_for(cfg, batch=2, pos=12, seed=1):
    return jnp.asarray(np.random.default_rng(seed).integers(0, cfg.d_vocab, (batch, pos)))
