"""Find heads by their attention patterns (TransformerLens's head_detector), all heads at once.

    scores = detect_head(model, "One two three one two three", "induction_head")   # [layers, heads]
    scores = induction_scores(model, seq_len=20)                                  # repeated random tokens
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from jtlens.core.tokens import bos_id

HEAD_NAMES = ("previous_token_head", "duplicate_token_head", "induction_head")


def previous_token_pattern(tokens) -> np.ndarray:
    """[pos, pos] with ones where each position looks at the one before it."""
    return np.eye(np.shape(tokens)[-1], k=-1, dtype=np.float32)


def duplicate_token_pattern(tokens) -> np.ndarray:
    """[pos, pos] with ones where an earlier position holds the same token."""
    t = np.asarray(tokens).reshape(-1)
    return np.tril(t[:, None] == t[None, :], k=-1).astype(np.float32)


def induction_pattern(tokens) -> np.ndarray:
    """[pos, pos] with ones on the token just after each earlier occurrence of the current one."""
    dup = duplicate_token_pattern(tokens)
    shifted = np.zeros_like(dup)
    shifted[:, 1:] = dup[:, :-1]
    return np.tril(shifted)


# TransformerLens's names for the same detection patterns.
get_previous_token_head_detection_pattern = previous_token_pattern
get_duplicate_token_head_detection_pattern = duplicate_token_pattern
get_induction_head_detection_pattern = induction_pattern

_PATTERNS = {"previous_token_head": previous_token_pattern,
             "duplicate_token_head": duplicate_token_pattern, "induction_head": induction_pattern}


def head_scores(patterns, detection, *, exclude_bos: bool = False,
                exclude_current_token: bool = False, error_measure: str = "mul"):
    """Similarity of attention patterns [..., q, k] to a detection pattern [q, k] -> [...].

    "mul": attention mass on the detection pattern's cells over total mass; "abs": 1 - mean
    absolute difference times size, rounded to 3 decimals (TransformerLens's two measures)."""
    patterns, detection = jnp.asarray(patterns), jnp.asarray(detection, patterns.dtype)
    n = patterns.shape[-1]
    keep = jnp.ones((n, n), patterns.dtype)
    if exclude_bos:
        keep = keep.at[:, 0].set(0)
    if exclude_current_token:
        keep = keep * (1 - jnp.eye(n, dtype=patterns.dtype))
    if error_measure == "mul":
        kept = patterns * keep
        return (kept * detection).sum((-1, -2)) / kept.sum((-1, -2))
    if error_measure == "abs":
        diff = jnp.abs(patterns - detection) * keep
        return 1 - jnp.round(diff.mean((-1, -2)) * n, 3)
    raise ValueError(f"error_measure must be 'mul' or 'abs', got {error_measure!r}")


class HeadDetectorError(ValueError, AssertionError):
    """A prompt or detection pattern detect_head cannot score (TransformerLens asserts)."""


def detect_head(model, seq: Union[str, Sequence[str]], detection_pattern, heads=None, cache=None,
                *, exclude_bos: bool = False, exclude_current_token: bool = False,
                error_measure: str = "mul"):
    """Score every head (or those in `heads`: [(layer, head)] or {layer: [heads]}) against a
    detection pattern (a name in HEAD_NAMES, or a lower-triangular [pos, pos] array) on `seq`.
    Returns [n_layers, n_heads]; heads not asked for are -1. A list of prompts averages."""
    if isinstance(seq, (list, tuple)):
        if cache is not None:
            raise ValueError("detect_head: one cache cannot serve several prompts; pass one "
                             "prompt with its cache, or omit the cache")
        return jnp.stack([detect_head(model, s, detection_pattern, heads, exclude_bos=exclude_bos,
                                      exclude_current_token=exclude_current_token,
                                      error_measure=error_measure) for s in seq]).mean(0)
    cfg = model.cfg
    tokens = np.asarray(model.to_tokens(seq))[0]
    if isinstance(detection_pattern, str):
        if detection_pattern not in _PATTERNS:
            raise ValueError(f"detection_pattern {detection_pattern!r}: use an array or one of {HEAD_NAMES}")
        detection_pattern = _PATTERNS[detection_pattern](tokens)
    detection = np.asarray(detection_pattern, np.float32)
    if not 1 < len(tokens) < cfg.n_ctx:
        # TransformerLens's words (its tests compare them); the prompt had len(tokens) tokens
        raise HeadDetectorError("The sequence must be non-empty and must fit within the model's "
                                "context window.")
    if detection.shape != (len(tokens),) * 2 or np.triu(detection, 1).any():
        raise HeadDetectorError(f"The detection pattern must be a lower triangular matrix of shape "
                                f"(sequence_length, sequence_length) = ({len(tokens)}, "
                                f"{len(tokens)}) for this prompt; got shape {detection.shape}")
    if cache is None:
        _, cache = model.run_with_cache(tokens[None], names_filter="blocks.*.attn.hook_pattern")
        patterns = cache["blocks.*.attn.hook_pattern"][:, 0]
    else:
        patterns = cache["blocks.*.attn.hook_pattern"]
        patterns = patterns[:, 0] if cache.has_batch_dim else patterns
    scores = head_scores(patterns, detection, exclude_bos=exclude_bos,
                         exclude_current_token=exclude_current_token, error_measure=error_measure)
    if heads is None:
        return scores
    pairs = heads.items() if isinstance(heads, dict) else [(l, [h]) for l, h in heads]
    wanted = np.zeros((cfg.n_layers, cfg.n_heads), bool)
    for layer, hs in pairs:
        wanted[layer, list(hs)] = True
    return jnp.where(wanted, scores, -1.0)


def repeated_random_tokens(model, seq_len: int = 20, n_prompts: int = 4, seed: int = 0,
                           prepend_bos: Optional[bool] = None) -> jax.Array:
    """Random token ids said twice, [n_prompts, (1 +) 2 * seq_len], after BOS when the model
    prepends it: the standard probe for induction, since only copying from context can predict
    the second half."""
    cfg = model.cfg
    if seq_len < 1 or n_prompts < 1:
        raise ValueError(f"seq_len={seq_len}, n_prompts={n_prompts}: both must be at least 1")
    bos = cfg.default_prepend_bos if prepend_bos is None else prepend_bos
    if 2 * seq_len + bos > cfg.n_ctx:
        raise ValueError(f"{2 * seq_len + bos} tokens (a {seq_len}-token sequence twice"
                         f"{' after BOS' if bos else ''}) exceed n_ctx={cfg.n_ctx}; "
                         "use a smaller seq_len")
    rand = jax.random.randint(jax.random.PRNGKey(seed), (n_prompts, seq_len), 1, cfg.d_vocab)
    rep = jnp.concatenate([rand, rand], axis=1)
    if bos:
        token = bos_id(model.tokenizer) if model.tokenizer is not None else 0
        rep = jnp.concatenate([jnp.full((n_prompts, 1), token), rep], axis=1)
    return rep


def induction_patterns(model, seq_len: int = 20, n_prompts: int = 4, seed: int = 0,
                       prepend_bos: Optional[bool] = None):
    """-> (`repeated_random_tokens` [n_prompts, pos], every head's attention on them
    [n_layers, n_prompts, n_heads, pos, pos])."""
    rep = repeated_random_tokens(model, seq_len, n_prompts, seed, prepend_bos)
    # the patterns are all that is read: stopping before the unembedding skips its
    # [tokens, d_model] x [d_model, d_vocab] product (a fifth of SmolLM2's work here)
    _, cache = model.run_with_cache(rep, names_filter="blocks.*.attn.hook_pattern",
                                    stop_at_layer=model.cfg.n_layers)
    return rep, cache["blocks.*.attn.hook_pattern"]


def induction_pattern_scores(pattern, seq_len: int):
    """`induction_patterns`' attention [L, b, H, q, k] -> [L, H]: the mean attention from each
    query of the second copy to the token after its first occurrence."""
    # Query q of the second copy -> key q - seq_len + 1; the diagonal's last seq_len entries
    # are exactly the second copy's queries (with or without BOS in front).
    stripe = jnp.diagonal(pattern, offset=1 - seq_len, axis1=-2, axis2=-1)[..., -seq_len:]
    return stripe.mean((1, -1))


def induction_scores(model, seq_len: int = 20, n_prompts: int = 4, seed: int = 0,
                     prepend_bos: Optional[bool] = None):
    """Mean attention from each token of a repeated random sequence to the token after its
    first occurrence: [n_layers, n_heads] (induction heads score near 1)."""
    _, pattern = induction_patterns(model, seq_len, n_prompts, seed, prepend_bos)
    return induction_pattern_scores(pattern, seq_len)
