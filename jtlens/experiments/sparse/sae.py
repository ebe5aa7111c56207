"""The SAE pytree: SAELens's tensor names and inference semantics for every architecture.

    sae = SAE.load_from_disk("path/to/sae")        # cfg.json + sae_weights.safetensors
    acts = sae.encode(x)                           # [..., d_sae]
    x_hat = sae.decode(acts)                       # [..., d_in]

`SAE` is a registered pytree: `params` (W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in],
b_dec [d_in]; `threshold` [d_sae] for jumprelu; `b_gate`, `r_mag`, `b_mag` instead of b_enc for
gated) are leaves, the config is static. So an SAE goes through jit, vmap (a stack of SAEs with a
leading axis) and grad like any array. Every step that SAELens exposes as a hook point calls
`hook(name, act)` here, which is how `jtlens.sparse.splice` captures and edits them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from jtlens.experiments.sparse.config import PARAM_NAMES, SAEConfig, param_shapes  # noqa: F401
from jtlens.experiments.sparse.formats import (CFG_FILE, WEIGHTS_FILE, read_sae, read_sparsify,
                                              write_sae)

HookFn = Callable[[str, jax.Array], jax.Array]
SAE_HOOKS = ("hook_sae_input", "hook_sae_acts_pre", "hook_sae_acts_post", "hook_sae_recons",
             "hook_sae_error", "hook_sae_output")

def _no_hook(name: str, act: jax.Array) -> jax.Array:
    return act


@dataclasses.dataclass(frozen=True)
class NormStats:
    """What `normalize_activations` took out of the input and `decode` puts back
    (layer_norm: mean and std; constant_norm_rescale: the rescale factor); None fields otherwise."""

    mu: Any = None
    std: Any = None
    coeff: Any = None


jax.tree_util.register_dataclass(NormStats, data_fields=("mu", "std", "coeff"), meta_fields=())


@dataclasses.dataclass(frozen=True)
class SAE:
    """A sparse autoencoder: `params` (dict of arrays, SAELens's names) and a static `cfg`.

    `use_error_term` only affects `sae(x)` (SAELens's `SAE.forward`): the output is then
    `x` exactly, with the reconstruction error added back. Splicing into a model takes its own
    `use_error_term` (see `jtlens.sparse.splice`).
    """

    params: dict
    cfg: SAEConfig
    use_error_term: bool = False

    # ------------------------------------------------------------------ construction
    @classmethod
    def init(cls, cfg: SAEConfig, key: jax.Array, decoder_norm: Optional[float] = 0.1) -> "SAE":
        """SAELens's training initialisation: W_dec Kaiming-uniform rows scaled to `decoder_norm`
        (None: unscaled), W_enc = W_dec.T, zero biases and thresholds (r_mag 0)."""
        bound = (6.0 / cfg.d_in) ** 0.5  # torch's kaiming_uniform_ bound, fan_in = d_in
        W_dec = jax.random.uniform(key, (cfg.d_sae, cfg.d_in), jnp.float32, -bound, bound)
        if decoder_norm is not None:
            W_dec = W_dec / jnp.linalg.norm(W_dec, axis=-1, keepdims=True) * decoder_norm
        params = {n: jnp.zeros(s, jnp.float32) for n, s in param_shapes(cfg).items()}
        params.update(W_dec=W_dec, W_enc=W_dec.T)
        return cls(jax.tree_util.tree_map(lambda a: a.astype(cfg.dtype), params), cfg)

    @classmethod
    def load_from_disk(cls, path, device: str = "cpu", dtype: Optional[str] = None) -> "SAE":
        """SAELens's `SAE.load_from_disk`: an SAELens folder (v6 or pre-6.0 cfg.json).
        `device` is accepted for SAELens's signature; arrays go to JAX's default device."""
        return cls(*read_sae(path, dtype))

    @classmethod
    def load_sparsify(cls, path, dtype: Optional[str] = None) -> "SAE":
        """An EleutherAI sparsify SAE folder (`<hookpoint>/cfg.json` + sae.safetensors) as a
        TopK SAE: relu(encoder(x - b_dec)), top k, decoded with W_dec."""
        return cls(*read_sparsify(path, dtype))

    def save_model(self, path, sparsity=None, overwrite: bool = False):
        """SAELens's `save_model`: write cfg.json + sae_weights.safetensors (+ sparsity) into
        `path`; returns (weights path, cfg path). An existing non-empty folder needs overwrite."""
        path = write_sae(self.params, self.cfg, path, sparsity, overwrite)
        return path / WEIGHTS_FILE, path / CFG_FILE

    def __getattr__(self, name: str):
        # sae.W_enc, sae.threshold, ...: SAELens's parameter attributes
        params = self.__dict__.get("params")
        if params is not None and name in params:
            return params[name]
        raise AttributeError(f"SAE has no attribute {name!r}")

    @property
    def dtype(self):
        return jnp.dtype(self.cfg.dtype)

    # ------------------------------------------------------------------ the computation
    def encode(self, x: Float[Array, "... d_in"], hook: HookFn = _no_hook) -> Float[Array, "... d_sae"]:
        """Feature activations [..., d_sae] of x [..., d_in] (hook_z SAEs: [..., heads, d_head])."""
        return self.encode_with_stats(x, hook)[0]

    def encode_with_stats(self, x, hook: HookFn = _no_hook):
        """(feature activations, NormStats): the stats are what `decode` needs to undo
        `normalize_activations` for this x (layer_norm, constant_norm_rescale)."""
        sae_in, stats = self._process_in(x, hook)
        return self._activate(sae_in, hook), stats

    def decode(self, feature_acts: Float[Array, "... d_sae"], stats: Optional[NormStats] = None,
               hook: HookFn = _no_hook, d_head: Optional[int] = None) -> Float[Array, "... d_in"]:
        """The reconstruction [..., d_in] of feature activations [..., d_sae].

        stats: from `encode_with_stats`, needed when the SAE normalises its input per token.
        d_head: for hook_z SAEs, to give back [..., n_heads, d_head].
        """
        p, cfg = self.params, self.cfg
        if cfg.normalize_activations in ("layer_norm", "constant_norm_rescale") and stats is None:
            raise ValueError(f"this SAE normalises its input ({cfg.normalize_activations}), so "
                             f"decode needs the input's stats: use sae(x), or "
                             f"`acts, stats = sae.encode_with_stats(x)` then decode(acts, stats)")
        acts = feature_acts.astype(self.dtype)
        if cfg.architecture == "topk" and cfg.rescale_acts_by_decoder_norm:
            acts = acts / jnp.linalg.norm(p["W_dec"], axis=-1)
        out = hook("hook_sae_recons", acts @ p["W_dec"] + p["b_dec"])
        if cfg.normalize_activations == "layer_norm":
            out = out * stats.std + stats.mu
        elif cfg.normalize_activations == "constant_norm_rescale":
            out = out / stats.coeff
        if cfg.reshape_activations == "hook_z" and d_head is not None:
            out = out.reshape(out.shape[:-1] + (-1, d_head))
        return out

    def forward(self, x: Float[Array, "... d_in"], hook: HookFn = _no_hook,
                use_error_term: Optional[bool] = None) -> Float[Array, "... d_in"]:
        """decode(encode(x)), with the error term `x - recon` (computed without the hook's edits,
        and without gradient, as SAELens) added back when `use_error_term`."""
        use_error_term = self.use_error_term if use_error_term is None else use_error_term
        acts, stats = self.encode_with_stats(x, hook)
        out = self.decode(acts, stats, hook, self._d_head(x))
        if use_error_term:
            clean = jax.lax.stop_gradient(self.forward(x, use_error_term=False))
            out = out + hook("hook_sae_error", jax.lax.stop_gradient(x.astype(out.dtype) - clean))
        return hook("hook_sae_output", out)

    __call__ = forward

    # ------------------------------------------------------------------ pieces
    def _d_head(self, x) -> Optional[int]:
        return x.shape[-1] if self.cfg.reshape_activations == "hook_z" else None

    def _process_in(self, x, hook: HookFn):
        """SAELens's process_sae_in: cast, flatten heads, hook_sae_input, normalise, - b_dec."""
        cfg = self.cfg
        x = jnp.asarray(x).astype(self.dtype)
        if cfg.reshape_activations == "hook_z":
            if x.ndim < 2 or x.shape[-2] * x.shape[-1] != cfg.d_in:
                raise ValueError(f"a hook_z SAE reads [..., n_heads, d_head] with n_heads * d_head "
                                 f"= d_in = {cfg.d_in}; got shape {tuple(x.shape)}")
            x = x.reshape(x.shape[:-2] + (-1,))
        elif x.shape[-1] != cfg.d_in:
            raise ValueError(f"the SAE reads activations of width d_in={cfg.d_in}; got shape "
                             f"{tuple(x.shape)}")
        x = hook("hook_sae_input", x)
        stats = NormStats()
        if cfg.normalize_activations == "layer_norm":
            mu = x.mean(-1, keepdims=True)
            std = jnp.std(x - mu, axis=-1, keepdims=True, ddof=1)  # torch's unbiased .std()
            x, stats = (x - mu) / (std + 1e-5), NormStats(mu=mu, std=std)
        elif cfg.normalize_activations == "constant_norm_rescale":
            coeff = cfg.d_in ** 0.5 / jnp.linalg.norm(x, axis=-1, keepdims=True)
            x, stats = x * coeff, NormStats(coeff=coeff)
        if cfg.apply_b_dec_to_input:
            x = x - self.params["b_dec"]
        return x, stats

    def _activate(self, sae_in, hook: HookFn):
        p, cfg = self.params, self.cfg
        arch = cfg.architecture
        if arch == "gated":
            active = sae_in @ p["W_enc"] + p["b_gate"] > 0
            mag = hook("hook_sae_acts_pre", sae_in @ (p["W_enc"] * jnp.exp(p["r_mag"])) + p["b_mag"])
            return hook("hook_sae_acts_post", jnp.where(active, jax.nn.relu(mag), 0.0).astype(mag.dtype))
        pre = hook("hook_sae_acts_pre", sae_in @ p["W_enc"] + p["b_enc"])
        if arch == "standard":
            acts = jax.nn.relu(pre)
        elif arch == "jumprelu":
            acts = jumprelu(pre, p["threshold"])
        else:  # topk
            if cfg.rescale_acts_by_decoder_norm:
                pre = pre * jnp.linalg.norm(p["W_dec"], axis=-1)
            acts = topk_relu(pre, cfg.k)
        return hook("hook_sae_acts_post", acts)


def topk_relu(x: Float[Array, "... d_sae"], k: int) -> Float[Array, "... d_sae"]:
    """Keep the k largest entries of each row (ReLU applied to them), zero the rest."""
    values, idx = jax.lax.top_k(x, k)
    rows = jnp.zeros_like(x).reshape(-1, x.shape[-1])
    flat_idx = idx.reshape(-1, k)
    rows = rows.at[jnp.arange(rows.shape[0])[:, None], flat_idx].set(
        jax.nn.relu(values).reshape(-1, k))
    return rows.reshape(x.shape)


def jumprelu(x: Float[Array, "... d_sae"], threshold) -> Float[Array, "... d_sae"]:
    """ReLU of the entries above their threshold [d_sae] (broadcast), zero the rest."""
    return jnp.where(x > threshold, jax.nn.relu(x), 0.0).astype(x.dtype)


def batchtopk_to_jumprelu(sae: SAE, threshold: float) -> SAE:
    """A BatchTopK SAE (trained as TopK over the batch) as SAELens saves it for inference: a
    JumpReLU SAE whose every threshold is the learned batch-TopK threshold."""
    p = {n: a for n, a in sae.params.items() if n in PARAM_NAMES["jumprelu"]}
    p["threshold"] = jnp.full((sae.cfg.d_sae,), threshold, sae.dtype)
    return SAE(p, sae.cfg.replace(architecture="jumprelu", k=None,
                                  rescale_acts_by_decoder_norm=False), sae.use_error_term)


jax.tree_util.register_dataclass(SAE, data_fields=("params",), meta_fields=("cfg", "use_error_term"))
