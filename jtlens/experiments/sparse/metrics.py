"""SAE evaluation with SAELens's formulas (`sae_lens.evals`), so numbers compare across libraries.

`reconstruction_metrics` takes activations at the SAE's hook (L0, L1, MSE, cosine similarity,
explained variance, norms, feature density); `downstream_metrics` runs the model clean, with the
SAE spliced in (no error term) and with the hook zero-ablated (CE loss score, KL score).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from jtlens.core.config import Config
from jtlens.core.hooks import Hooks
from jtlens.core.forward import forward
from jtlens.core.hook_catalogue import hook_catalogue
from jtlens.experiments.sparse.sae import SAE
from jtlens.experiments.sparse.splice import Attached, run_with_saes


def reconstruction_metrics(sae: SAE, acts, mask=None) -> dict:
    """SAELens's sparsity and variance metrics on activations `acts` [batch, pos, ...] at the
    SAE's hook (`mask` [batch, pos]: tokens to count, default all).

    Returns floats: l0, l1, mse (squared error summed over d_in, mean over tokens), cossim,
    explained_variance (1 - E||x - x_hat||^2 / (E||x||^2 - ||E x||^2), over all tokens),
    explained_variance_legacy (per-token, averaged), l2_norm_in, l2_norm_out, l2_ratio,
    relative_reconstruction_bias; and `feature_density` [d_sae] (fraction of tokens on which
    each feature fires), a NumPy array.
    """
    acts = jnp.asarray(acts)
    feats, stats = sae.encode_with_stats(acts)
    out = sae.decode(feats, stats)
    x = acts.reshape(-1, sae.cfg.d_in).astype(jnp.float32)
    x_hat = out.reshape(-1, sae.cfg.d_in).astype(jnp.float32)
    f = feats.reshape(-1, sae.cfg.d_sae)
    keep = np.ones(x.shape[0], bool) if mask is None else np.asarray(mask, bool).reshape(-1)
    x, x_hat, f = x[keep], x_hat[keep], f[keep]
    resid = ((x - x_hat) ** 2).sum(-1)
    norm_in, norm_out = jnp.linalg.norm(x, axis=-1), jnp.linalg.norm(x_hat, axis=-1)
    x64 = np.asarray(x, np.float64)  # E||x||^2 - ||E x||^2 cancels badly in f32 (SAELens: f64)
    total_var = (x64 ** 2).sum(-1).mean() - (x64.mean(0) ** 2).sum()
    legacy = 1 - resid / ((x - x.mean(0)) ** 2).sum(-1)
    out_metrics = {
        "l0": (f != 0).sum(-1).mean(), "l1": jnp.abs(f).sum(-1).mean(), "mse": resid.mean(),
        "cossim": ((x / norm_in[:, None]) * (x_hat / norm_out[:, None])).sum(-1).mean(),
        "explained_variance": 1 - resid.mean() / total_var,
        "explained_variance_legacy": legacy.mean(),
        "l2_norm_in": norm_in.mean(), "l2_norm_out": norm_out.mean(),
        "l2_ratio": (norm_out / jnp.where(jnp.abs(norm_in) < 1e-4, 1.0, norm_in)).mean(),
        "relative_reconstruction_bias": (norm_out ** 2).mean() / (x * x_hat).sum(-1).mean(),
    }
    metrics = {k: float(v) for k, v in out_metrics.items()}
    metrics["feature_density"] = np.asarray((f != 0).mean(0))
    return metrics


def log_feature_sparsity(density, eps: float = 1e-10) -> np.ndarray:
    """log10 feature density, the `sparsity` tensor of SAELens's sparsity.safetensors."""
    return np.log10(np.asarray(density) + eps)


def dead_features(density, threshold: float = 1e-8) -> np.ndarray:
    """Indices of features whose density is at most `threshold` (SAELens's
    dead_feature_threshold default)."""
    return np.flatnonzero(np.asarray(density) <= threshold)


def dense_features(density, threshold: float = 0.1) -> np.ndarray:
    """Indices of features firing on more than `threshold` of tokens."""
    return np.flatnonzero(np.asarray(density) > threshold)


def density_histogram(density, bins: int = 50, eps: float = 1e-10):
    """(counts, log10-density bin edges): the feature density histogram SAELens logs."""
    return np.histogram(log_feature_sparsity(density, eps), bins=bins)


def _kl(clean_logits, new_logits):
    """KL(clean || new) per token [batch, pos], as SAELens's evals._kl."""
    p = jax.nn.softmax(clean_logits, -1)
    return (p * (jax.nn.log_softmax(clean_logits, -1) - jax.nn.log_softmax(new_logits, -1))).sum(-1)


def downstream_metrics(params, tokens, cfg: Config, sae: SAE, hook_name: Optional[str] = None) -> dict:
    """SAELens's reconstruction-loss metrics on `tokens` [batch, pos]: the model clean, with the
    SAE's reconstruction replacing its hook (no error term), and with the hook zero-ablated.

    Returns ce_loss_without_sae / ce_loss_with_sae / ce_loss_with_ablation (mean next-token CE),
    ce_loss_score = (CE_ablation - CE_sae) / (CE_ablation - CE_clean), kl_div_with_sae /
    kl_div_with_ablation (mean KL(clean || run) per token) and kl_div_score, as floats.
    """
    hook = hook_catalogue(cfg).one(hook_name or sae.cfg.metadata.hook_name, "downstream_metrics")
    return {k: float(v) for k, v in _downstream(params, jnp.asarray(tokens), cfg, sae, hook).items()}


def _downstream_impl(params, tokens, cfg, sae, hook):
    clean_logits, clean_loss = forward(params, tokens, cfg, return_type="both", loss_per_token=True)
    sae_logits, sae_loss = run_with_saes(params, tokens, cfg, [Attached(sae, False, hook)],
                                         return_type="both", loss_per_token=True)
    abl_logits, abl_loss = forward(params, tokens, cfg, Hooks(patch={hook: (jnp.float32(0), None)}),
                                   return_type="both", loss_per_token=True)
    ce = {"ce_loss_without_sae": clean_loss.mean(), "ce_loss_with_sae": sae_loss.mean(),
          "ce_loss_with_ablation": abl_loss.mean()}
    kl_sae, kl_abl = _kl(clean_logits, sae_logits).mean(), _kl(clean_logits, abl_logits).mean()
    return {**ce, "kl_div_with_sae": kl_sae, "kl_div_with_ablation": kl_abl,
            "kl_div_score": (kl_abl - kl_sae) / kl_abl,
            "ce_loss_score": (ce["ce_loss_with_ablation"] - ce["ce_loss_with_sae"])
            / (ce["ce_loss_with_ablation"] - ce["ce_loss_without_sae"])}


_downstream = jax.jit(_downstream_impl, static_argnames=("cfg", "hook"))
