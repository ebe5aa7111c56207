"""Training transcoders with the SAE trainer: one transcoder per layer, all layers in one
vmapped program (MSE to the MLP output).

    x, y = mlp_activations(params, cfg, tokens)                  # [L, n_tokens, d_model] each
    tc = TrainConfig("topk", d_in=d, d_sae=8 * d, d_out=d, k_max=32, total_steps=1000)
    hyper = Hyper.stack([Hyper(k=32)] * cfg.n_layers)
    state = init_state(tc, hyper, key)
    state, metrics = train_step(state, hyper, (x[:, idx], y[:, idx]), tc)  # every layer at once
    transcoders = to_transcoders(state, hyper, tc)
"""

from __future__ import annotations

import jax.numpy as jnp

from jtlens.core.config import Config
from jtlens.core.forward import forward_with_cache
from jtlens.core.hooks import Hooks
from jtlens.experiments.sparse.train import Hyper, TrainConfig, TrainState
from jtlens.experiments.sparse.transcoder import TranscoderConfig, Transcoders


def mlp_activations(params, cfg: Config, tokens, input_hook: str = "ln2.hook_normalized",
                    output_hook: str = "hook_mlp_out"):
    """Every layer's MLP inputs and outputs on `tokens` [batch, pos]: (x [L, batch*pos, d_in],
    y [L, batch*pos, d_out]), the training pairs of per-layer transcoders."""
    _, cache = forward_with_cache(params, jnp.asarray(tokens), cfg, Hooks(
        capture=[f"blocks.*.{input_hook}", f"blocks.*.{output_hook}"]), return_type=None)
    x, y = cache.stacked[input_hook], cache.stacked[output_hook]
    return x.reshape(x.shape[0], -1, x.shape[-1]), y.reshape(y.shape[0], -1, y.shape[-1])


def to_transcoders(state: TrainState, hyper: Hyper, tc: TrainConfig,
                   input_hook: str = "ln2.hook_normalized", output_hook: str = "hook_mlp_out",
                   scan=None) -> Transcoders:
    """The inference transcoders of a layer-stacked training state (one entry per layer).
    batchtopk becomes jumprelu at its learned threshold and rescaled decoder norms are folded
    in, as SAELens saves SAEs."""
    if not tc.d_out:
        raise ValueError("this TrainConfig trains SAEs (no d_out); to_transcoders needs one "
                         "trained with d_out, on (MLP input, MLP output) pairs")
    p = state.params
    out = {n: p[n] for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
    if tc.rescale_acts_by_decoder_norm:
        norm = jnp.linalg.norm(p["W_dec"], axis=-1)                   # [L, d_sae]
        out.update(W_enc=p["W_enc"] * norm[:, None], b_enc=p["b_enc"] * norm,
                   W_dec=p["W_dec"] / norm[..., None])
    extra = {}
    if tc.architecture == "jumprelu":
        out["threshold"] = p["threshold"]
        extra["activation"] = "jumprelu"
    elif tc.architecture == "batchtopk":
        out["threshold"] = jnp.broadcast_to(state.topk_threshold[:, None], out["b_enc"].shape)
        extra["activation"] = "jumprelu"
    elif tc.architecture == "topk":
        ks = {int(k) for k in jnp.ravel(hyper.k)}
        if len(ks) != 1:
            raise ValueError(f"the layers were trained with different k ({sorted(ks)}); "
                             f"Transcoders holds one k for all layers")
        extra.update(activation="topk", k=ks.pop())
    if tc.skip:
        out["W_skip"] = p["W_skip"]
    cfg = TranscoderConfig(n_layers=out["W_enc"].shape[0], d_in=tc.d_in, d_transcoder=tc.d_sae,
                           d_out=tc.d_out, skip=tc.skip, input_hook=input_hook,
                           output_hook=output_hook, scan=scan, **extra)
    return Transcoders(out, cfg)
