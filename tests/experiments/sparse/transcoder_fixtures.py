"""Tiny random models and transcoders for the transcoder, replacement-model and attribution
tests (2 layers, d_model 32, 8 positions)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

import jtlens
from jtlens.experiments.sparse.transcoder import TranscoderConfig, Transcoders

MODELS = {
    "llama": dict(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, d_vocab=40, n_ctx=16,
                  act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary",
                  rotary_dim=8, gated_mlp=True, n_key_value_heads=2),
    "gpt2": dict(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, d_vocab=40, n_ctx=16,
                 act_fn="gelu_new", normalization_type="LN"),
}
TRANSCODERS = {
    "jumprelu_skip": dict(activation="jumprelu", skip=True),
    "clt": dict(cross_layer=True),
    "topk": dict(activation="topk", k=6),
}


def model(name: str):
    cfg = jtlens.Config(**MODELS[name])
    params = jtlens.init_params(cfg, jax.random.PRNGKey(1))
    tokens = jax.random.randint(jax.random.PRNGKey(2), (8,), 0, cfg.d_vocab)
    return cfg, params, tokens


def transcoders(cfg, kind: str, seed: int = 3) -> Transcoders:
    """Random transcoders with small positive encoder biases, so a fair share of features fire."""
    tcfg = TranscoderConfig(cfg.n_layers, cfg.d_model, 48, **TRANSCODERS[kind])
    tc = Transcoders.init(tcfg, jax.random.PRNGKey(seed), scale=0.5)
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed + 1), 3)
    params = dict(tc.params, b_enc=jax.random.uniform(k1, tc.b_enc.shape, minval=-0.2, maxval=0.3),
                  b_dec=0.1 * jax.random.normal(k2, tc.b_dec.shape))
    if "threshold" in params:
        params["threshold"] = jnp.full(tc.threshold.shape, 0.05)
    if "W_skip" in params:
        params["W_skip"] = 0.1 * jax.random.normal(k3, tc.W_skip.shape)
    return Transcoders(params, tcfg)
