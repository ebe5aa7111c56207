"""What a feature dashboard shows, computed over corpus windows (rendering: jtlens.report).

    windows = context_windows(corpus_tokens("docstrings", tok), 127)     # [n, 127], then BOS
    data = dashboard_data(params, cfg, sae, windows, features=[12, 40])   # one dict per feature

Each batch of windows is one jitted program: the spliced forward, the chosen features'
activations, and a merge into the running top k per feature (`lax.top_k` over the batch's
positions and the k kept so far), so no loop runs per token. Positions holding `ignore_token`
(BOS: its activations dwarf the rest) count as inactive.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jtlens.core.config import Config
from jtlens.core.progress import shown
from jtlens.experiments.sparse.features import feature_acts, feature_logit_weights
from jtlens.experiments.sparse.sae import SAE

# Hooks whose activations are added to the residual stream, where W_dec @ W_U reads a logit effect.
_RESIDUAL = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out")


@functools.partial(jax.jit, static_argnames=("cfg", "hook"))
def _sae_acts(params, tokens, cfg, sae, hook, features):
    return feature_acts(params, tokens, cfg, sae, hook)[..., features]


@functools.partial(jax.jit, static_argnames=("k",))
def _merge(acts, keep, offset, k, best, where):
    """The top k per feature of acts [B, P, F] (zero where not `keep`) and of (best, where)
    [F, k]: flat positions count from `offset`. Also returns the masked acts [F, B * P]."""
    acts = jnp.where(keep[..., None], acts, 0.0).reshape(-1, acts.shape[-1]).T
    at = offset + jnp.arange(acts.shape[1], dtype=jnp.int32)
    values = jnp.concatenate([best, acts], 1)
    flat = jnp.concatenate([where, jnp.broadcast_to(at, acts.shape)], 1)
    best, i = jax.lax.top_k(values, k)
    return best, jnp.take_along_axis(flat, i, 1), acts


def top_positions(acts_of, windows, n_features: int, k: int = 10, batch_size: int = 32,
                  ignore_token: Optional[int] = None, progress: bool = True):
    """The k largest activations of each of `n_features` features over windows [n, P], where
    acts_of(tokens [batch_size, P]) -> [batch_size, P, n_features] (a jitted function: one batch
    shape, one compile; each batch merges into the running top k with `lax.top_k`, no loop per
    token). Positions holding `ignore_token` count as inactive.

    Returns (values [F, k], window [F, k], pos [F, k], active) where active[f] holds every
    non-zero activation of feature f (for its histogram); entries past a feature's active
    positions have value 0 and window -1.
    """
    windows = np.asarray(windows, np.int32)
    if windows.ndim != 2:
        raise ValueError(f"windows: shape {windows.shape}, expected [n_windows, positions]; cut a "
                         f"token stream into windows with context_windows(tokens, positions)")
    n, P = windows.shape
    n_pad = -n % batch_size
    padded = np.concatenate([windows, np.zeros((n_pad, P), np.int32)])
    keep = np.arange(len(padded))[:, None] < n
    if ignore_token is not None:
        keep = keep & (padded != ignore_token)
    best = jnp.zeros((n_features, k), jnp.float32)
    where = jnp.full((n_features, k), -1, jnp.int32)
    active = [[] for _ in range(n_features)]
    starts = range(0, len(padded), batch_size)
    for s in tqdm(starts, desc="feature activations", disable=not shown(progress) or len(starts) < 2):
        acts = acts_of(jnp.asarray(padded[s:s + batch_size]))
        best, where, acts = _merge(acts, jnp.asarray(keep[s:s + batch_size]), s * P, k, best, where)
        for f, row in enumerate(np.asarray(acts)):
            active[f].append(row[row != 0])
    best, where = np.asarray(best), np.asarray(where)
    where = np.where(best != 0, where, -1)  # zeros are no activation, whichever position
    return best, np.where(where >= 0, where // P, -1), np.where(where >= 0, where % P, -1), \
        [np.concatenate(a) for a in active]


def top_activations(params, cfg: Config, sae: SAE, windows, features, k: int = 10,
                    batch_size: int = 32, ignore_token: Optional[int] = None,
                    hook_name: Optional[str] = None, progress: bool = True):
    """The k largest activations of each SAE feature over windows [n, P]: `top_positions`'s
    (values [F, k], window [F, k], pos [F, k], active)."""
    features = jnp.asarray(features, jnp.int32)
    return top_positions(lambda t: _sae_acts(params, t, cfg, sae, hook_name, features), windows,
                         len(features), k, batch_size, ignore_token, progress)


def logit_effects(params, cfg: Config, sae: SAE, features, k: int = 10,
                  hook_name: Optional[str] = None):
    """(boosted ids, their weights, suppressed ids, their weights), each [F, k]: the extremes of
    W_dec[f] @ W_U through ln_final (`feature_logit_weights`), or None when the SAE's hook does
    not write to the residual stream."""
    hook = hook_name or sae.cfg.metadata.hook_name or ""
    if not hook.endswith(_RESIDUAL) or sae.cfg.d_in != cfg.d_model:
        return None
    w = np.asarray(feature_logit_weights(sae, params, cfg, features))            # [F, d_vocab]
    up, down = np.argsort(-w, -1)[:, :k], np.argsort(w, -1)[:, :k]
    return up, np.take_along_axis(w, up, -1), down, np.take_along_axis(w, down, -1)


def dashboard_data(params, cfg: Config, sae: SAE, windows, features, k: int = 10,
                   left: int = 8, right: int = 4, bins: int = 30, batch_size: int = 32,
                   ignore_token: Optional[int] = None, hook_name: Optional[str] = None,
                   progress: bool = True) -> list[dict]:
    """One dict per feature: feature, density (share of kept positions where it fires),
    max_act; top: (window, pos, value) of its k largest activations, with contexts: token ids
    [<= left + 1 + right] around each, their activations, and the index of the top token in
    it; hist_counts [bins] and hist_edges [bins + 1] of its non-zero activations; logits
    (`logit_effects`' four arrays for this feature) or None."""
    windows = np.asarray(windows, np.int32)
    values, win, pos, active = top_activations(params, cfg, sae, windows, features, k, batch_size,
                                               ignore_token, hook_name, progress)
    n_kept = windows.size if ignore_token is None else int((windows != ignore_token).sum())
    # the activations of every top window, one more batch
    rows = np.unique(win[win >= 0])
    acts = np.zeros((0, windows.shape[1], len(features)), np.float32)
    if rows.size:
        acts = feature_acts(params, windows[rows], cfg, sae, hook_name)
        acts = np.array(acts[..., jnp.asarray(features)])                      # [rows, P, F]
        if ignore_token is not None:
            acts[windows[rows] == ignore_token] = 0.0
    logits = logit_effects(params, cfg, sae, features, k, hook_name)
    out = []
    for f, feature in enumerate(np.asarray(features).tolist()):
        top = []
        for v, w, p in zip(values[f], win[f], pos[f]):
            if w < 0:
                break
            lo, hi = max(0, p - left), min(windows.shape[1], p + right + 1)
            row = acts[np.searchsorted(rows, w), lo:hi, f]
            top.append(dict(window=int(w), pos=int(p), value=float(v), tokens=windows[w, lo:hi],
                            acts=row, centre=int(p - lo)))
        counts, edges = np.histogram(active[f], bins=bins, range=(0.0, float(values[f, 0]) or 1.0))
        out.append(dict(feature=int(feature), density=active[f].size / n_kept,
                        max_act=float(values[f, 0]), top=top, hist_counts=counts, hist_edges=edges,
                        logits=None if logits is None else tuple(a[f] for a in logits)))
    return out
