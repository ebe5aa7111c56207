"""Numerical building blocks of the forward: norms, activations, positions, attention masks.

Each function is pure and follows TransformerLens's arithmetic order, because the point of
jtlens is to reproduce its numbers (see ../shared/reference, "Numerics details").
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jtlens.core.config import Config

_HIGH_PRECISION = (jnp.float32, jnp.float64)


def gelu_new(x):
    """GPT-2's tanh approximation of GELU."""
    return 0.5 * x * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * jnp.power(x, 3.0))))


def gelu_fast(x):
    return 0.5 * x * (1.0 + jnp.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


ACTIVATION_FNS: dict[str, Callable] = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": gelu_new,
    "gelu_fast": gelu_fast,
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
    "relu2": lambda x: jnp.square(jax.nn.relu(x)),
    "solu": lambda x: x * jax.nn.softmax(x, axis=-1),
    "solu_ln": lambda x: x * jax.nn.softmax(x, axis=-1),  # the model adds the LayerNorm (mlp.ln)
}


def xielu(x, alpha_p, alpha_n, beta, eps):
    """xIELU (Apertus), its per-layer parameters as Hugging Face and TransformerLens store them:
    alpha_p and alpha_n before a softplus, beta and eps as they are (all scalars)."""
    a_p, a_n = jax.nn.softplus(alpha_p), beta + jax.nn.softplus(alpha_n)
    return jnp.where(x > 0, a_p * x * x + beta * x,
                     (jnp.expm1(jnp.minimum(x, eps)) - x) * a_n + beta * x)


def softcap(x, cap: float):
    """`cap * tanh(x / cap)`, or x unchanged when the cap is off (<= 0)."""
    return cap * jnp.tanh(x / cap) if cap > 0 else x


def normalize(x, p: Optional[dict], kind: Optional[str], eps: float, hook: Callable):
    """LayerNorm / RMSNorm (and their weightless *Pre forms) with hook_scale / hook_normalized.

    Args:
      x: [..., length]. p: {"w": [length], "b": [length]} (LN) or {"w"} (RMS); None for *Pre.
      hook: `hook(name, act) -> act`, called with "hook_scale" ([..., 1]) and "hook_normalized".
    Norms run in float32 when the model is in lower precision, as TransformerLens does.
    """
    if kind is None:
        return x
    dtype = x.dtype
    if dtype not in _HIGH_PRECISION:
        x = x.astype(jnp.float32)
    if kind.startswith("LN"):
        x = x - x.mean(-1, keepdims=True)
    scale = jnp.sqrt(jnp.mean(jnp.square(x), -1, keepdims=True) + eps)
    # The barrier stops XLA rewriting x / sqrt(v) as x * rsqrt(v) only when the scale is not
    # captured, which would make capturing a hook change the logits.
    scale = hook("hook_scale", jax.lax.optimization_barrier(scale))
    x = hook("hook_normalized", x / scale).astype(dtype)
    if kind == "LN":
        return x * p["w"] + p["b"]
    if kind == "RMS":
        return x * p["w"]
    return x


# ----------------------------------------------------------------------------- positions

def positions_from_mask(attention_mask, n_pos: int, batch: int):
    """Position ids [batch, pos]: 0..pos-1, or shifted past left padding as TransformerLens does."""
    if attention_mask is None:
        return jnp.broadcast_to(jnp.arange(n_pos), (batch, n_pos))
    pos = jnp.cumsum(attention_mask, axis=1) - 1
    return jnp.where(pos < 0, 0, pos)


def rotary_inverse_periods(cfg: Config, local: bool = False) -> np.ndarray:
    """The per-pair period `freq` of TransformerLens's rotary table, repeated to rotary_dim.

    angle[pos, i] = pos / freq[i]; NeoX pairs i and i + d/2, GPT-J pairs adjacent entries.
    `local` layers use `rotary_base_local` when set; global ones scale by `rotary_scaling_factor`.
    """
    rd = cfg.rotary_dim
    base = np.float32(cfg.rotary_base_local if local and cfg.rotary_base_local is not None
                      else cfg.rotary_base)
    if cfg.use_NTK_by_parts_rope:
        inv = (1.0 / (base ** (np.arange(0, rd, 2).astype(np.float32) / np.float32(rd)))).astype(np.float32)
        factor = np.float32(cfg.NTK_by_parts_factor)
        lo, hi = cfg.NTK_by_parts_low_freq_factor, cfg.NTK_by_parts_high_freq_factor
        old = cfg.NTK_original_ctx_len
        wavelen = (2 * math.pi / inv).astype(np.float32)
        inv_l = np.where(wavelen > old / lo, inv / factor, inv).astype(np.float32)
        smooth = ((old / wavelen - lo) / (hi - lo)).astype(np.float32)
        smoothed = ((1 - smooth) * inv_l / factor + smooth * inv_l).astype(np.float32)
        medium = ~(wavelen < old / hi) & ~(wavelen > old / lo)
        freq = (1.0 / np.where(medium, smoothed, inv_l)).astype(np.float32)
    elif cfg.use_yarn_rope:
        freq = _yarn_periods(cfg, base)
    else:
        dim = np.arange(rd // 2, dtype=np.float32)
        freq = (base ** (dim / np.float32(rd / 2))).astype(np.float32)
        if not local:
            freq = (freq * np.float32(cfg.rotary_scaling_factor)).astype(np.float32)
    return np.repeat(freq, 2) if cfg.rotary_adjacent_pairs else np.tile(freq, 2)


def _yarn_periods(cfg: Config, base) -> np.ndarray:
    """YaRN's per-pair periods [rotary_dim / 2]: each inverse frequency moves from the original
    to original / yarn_factor along a ramp over the pairs between the correction dims."""
    rd, original = cfg.rotary_dim, cfg.yarn_original_max_position_embeddings

    def correction_dim(rotations):  # the pair that turns `rotations` times over the original context
        return rd * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(cfg.yarn_beta_fast), correction_dim(cfg.yarn_beta_slow)
    if cfg.yarn_truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, rd - 1)
    high = high + 0.001 if low == high else high  # (no zero-width ramp)
    ramp = np.clip((np.arange(rd // 2, dtype=np.float32) - low) / np.float32(high - low), 0, 1)
    inv = (1.0 / base ** (np.arange(0, rd, 2, dtype=np.float32) / np.float32(rd))).astype(np.float32)
    blended = inv / np.float32(cfg.yarn_factor) * ramp + inv * (1 - ramp)
    return (1.0 / blended).astype(np.float32)


def _layer_periods(cfg: Config, local):
    """The rotary periods of a layer; `local` may be traced (inside the layer scan)."""
    glob = rotary_inverse_periods(cfg)
    loc = rotary_inverse_periods(cfg, local=True)
    if np.array_equal(glob, loc):
        return jnp.asarray(glob)
    return jnp.where(local, jnp.asarray(loc), jnp.asarray(glob))


def apply_rotary(x, positions, cfg: Config, local=False):
    """Rotate the first rotary_dim features of x [batch, pos, heads, d_head] by positions [batch, pos]
    (with the periods of a local layer when `local`)."""
    rd = cfg.rotary_dim
    freq = _layer_periods(cfg, local)
    angles = positions.astype(jnp.float32)[..., None] / freq  # [batch, pos, rd]
    scale = cfg.yarn_attention_factor if cfg.use_yarn_rope else 1.0
    sin = (jnp.sin(angles) * scale).astype(x.dtype)[:, :, None, :]
    cos = (jnp.cos(angles) * scale).astype(x.dtype)[:, :, None, :]
    x_rot, x_pass = x[..., :rd], x[..., rd:]
    if cfg.rotary_adjacent_pairs:
        flip = jnp.stack([-x_rot[..., 1::2], x_rot[..., ::2]], axis=-1).reshape(x_rot.shape)
    else:
        half = rd // 2
        flip = jnp.concatenate([-x_rot[..., half:], x_rot[..., :half]], axis=-1)
    return jnp.concatenate([x_rot * cos + flip * sin, x_pass], axis=-1)


def alibi_slopes(n_heads: int) -> np.ndarray:
    """ALiBi's per-head slopes m_h [heads]: 2^(-8(h+1)/n) for n a power of two; otherwise (BLOOM's
    rule, e.g. its 112-head 176B model) those of the power of two p below n, then every other
    slope of 2p for the remaining heads. TransformerLens 3.9 uses the power-of-two formula for
    every n, so its BLOOM logits differ from Hugging Face's when n is not a power of two."""
    p = 2 ** int(math.floor(math.log2(n_heads)))
    slopes = 2.0 ** (-8.0 * np.arange(1, p + 1) / p)
    extra = 2.0 ** (-8.0 * np.arange(1, 2 * (n_heads - p), 2) / (2 * p))
    return np.concatenate([slopes, extra]).astype(np.float32)


def alibi_bias(n_heads: int, q_pos, k_pos):
    """ALiBi bias [heads, q, k] = m_h * min(k - q, 0), slopes m_h from `alibi_slopes`."""
    rel = jnp.minimum(k_pos[None, :] - q_pos[:, None], 0).astype(jnp.float32)
    return jnp.asarray(alibi_slopes(n_heads))[:, None, None] * rel[None]


def relative_position_buckets(n_q: int, n_k: int, bidirectional: bool, num_buckets: int,
                              max_distance: int) -> np.ndarray:
    """T5's bucket [n_q, n_k] of each offset key - query (Hugging Face's and TransformerLens's
    `_relative_position_bucket`).

    Offsets below half the buckets (a quarter each way when bidirectional) get one bucket each;
    longer ones share logarithmically wider buckets up to max_distance. Computed on the host in
    float32, as torch does: the bucket is the float's truncation, and the lengths are static.
    """
    rel = np.arange(n_k)[None, :] - np.arange(n_q)[:, None]
    buckets = np.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        buckets += (rel > 0) * num_buckets
        rel = np.abs(rel)
    else:
        rel = -np.minimum(rel, 0)
    max_exact = num_buckets // 2
    far = np.maximum(rel, max_exact).astype(np.float32)  # the offsets the log branch is for
    large = max_exact + (np.log(far / np.float32(max_exact)) / np.float32(math.log(max_distance / max_exact))
                         * np.float32(num_buckets - max_exact)).astype(np.int64)
    return buckets + np.where(rel < max_exact, rel, np.minimum(large, num_buckets - 1))


def attention_mask_matrix(cfg: Config, q_pos, k_pos, key_mask, is_local, causal: bool = True):
    """Boolean [batch|1, 1, q, k] of allowed attention (causal, sliding window, padding);
    `causal=False` for cross-attention, which sees every encoder position."""
    allowed = jnp.ones((q_pos.shape[0], k_pos.shape[0]), bool)
    if cfg.attention_dir == "causal" and causal:
        allowed = k_pos[None, :] <= q_pos[:, None]
        if cfg.use_local_attn:
            in_window = k_pos[None, :] > q_pos[:, None] - cfg.window_size
            allowed = allowed & (in_window | ~is_local)
    allowed = allowed[None, None]
    if key_mask is not None:
        allowed = allowed & key_mask.astype(bool)[:, None, None, :]
    return allowed


def lm_cross_entropy_loss(logits, tokens, attention_mask=None, per_token: bool = False):
    """Next-token cross-entropy: mean over positions, or [batch, pos-1] with per_token.

    With a mask, a position counts only when it and the next one are unmasked.
    """
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(log_probs[:, :-1], tokens[:, 1:, None], axis=-1)[..., 0]
    if attention_mask is None:
        return nll if per_token else nll.mean()
    valid = (attention_mask[:, 1:] * attention_mask[:, :-1]).astype(nll.dtype)
    nll = nll * valid
    return nll if per_token else nll.sum() / valid.sum()
