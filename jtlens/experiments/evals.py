"""TransformerLens's offline evals: `induction_loss` on random tokens said twice."""

from __future__ import annotations

from typing import Optional

import jax.numpy as jnp
import numpy as np

from jtlens.core.tokens import bos_id


def induction_loss(model, tokenizer=None, batch_size: int = 4, subseq_len: int = 384,
                   prepend_bos: Optional[bool] = None, device=None, seed: int = 0, tokens=None):
    """Mean next-token loss on the second half of random sequences repeated twice: low only if
    the model copies from context (induction heads).

    Tokens are drawn from [100, 20000) as TransformerLens does (clipped to the vocabulary), and
    position 0 is overwritten with BOS when prepending. `tokens` [batch, 2 * subseq_len] scores
    given repeated tokens instead (e.g. TransformerLens's own draw). `device` is accepted for
    TransformerLens code and unused (JAX's default device).
    """
    if tokens is None:
        high = min(20000, model.cfg.d_vocab)
        low = 100 if high > 200 else 0
        half = np.random.default_rng(seed).integers(low, high, (batch_size, subseq_len))
        tokens = np.concatenate([half, half], axis=1)
    tokens = np.array(tokens)
    bos = model.cfg.default_prepend_bos if prepend_bos is None else prepend_bos
    if bos:
        tok = model.tokenizer if tokenizer is None else tokenizer
        tokens[:, 0] = bos_id(tok) if tok is not None else 0
    # The loss inside the compiled forward: the [batch, pos, d_vocab] logits never leave it.
    per_token = model(jnp.asarray(tokens), return_type="loss", loss_per_token=True)
    return per_token[:, subseq_len + 1:].mean()
