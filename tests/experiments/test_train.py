"""jtlens.train: a 2-layer attention-only model learns induction on repeated random tokens."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jtlens
from jtlens.train import random_batches, train

CFG = jtlens.Config(n_layers=2, d_model=64, n_heads=4, d_head=16, d_vocab=64, n_ctx=48,
                    attn_only=True, normalization_type="LN")
SEQ = 41


def repeated_sequences(seed: int, batch: int = 32):
    """BOS, random filler, a random chunk of random length (6-20) twice, filler. The length
    varies so that no fixed positional offset predicts the repeat: only induction does."""
    rng = np.random.default_rng(seed)
    while True:
        rows = []
        for _ in range(batch):
            p = rng.integers(6, 21)
            pre = rng.integers(0, SEQ - 2 * p)
            chunk = rng.integers(1, CFG.d_vocab, p)
            rows.append(np.concatenate([[0], rng.integers(1, CFG.d_vocab, pre), chunk, chunk,
                                        rng.integers(1, CFG.d_vocab, SEQ - 1 - 2 * p - pre)]))
        yield jnp.asarray(np.stack(rows), jnp.int32)


def induction_eval(params, half: int = 12):
    """(loss on the first half, loss on the repeat, per-head induction score [layer, head]):
    the attention from each repeated token to the token after its first occurrence."""
    chunk = np.random.default_rng(123).integers(1, CFG.d_vocab, (16, half))
    tokens = jnp.asarray(np.concatenate([np.zeros((16, 1), int), chunk, chunk], 1), jnp.int32)
    loss, cache = jtlens.forward_with_cache(params, tokens, CFG, return_type="loss",
                                            loss_per_token=True,
                                            hooks=jtlens.Hooks(capture=["blocks.*.attn.hook_pattern"]))
    q = jnp.arange(half + 1, 2 * half + 1)
    score = cache["blocks.*.attn.hook_pattern"][..., q, q - half + 1].mean((1, 3))
    return float(loss[:, :half].mean()), float(loss[:, half + 1:].mean()), np.asarray(score)


@pytest.mark.slow
@pytest.mark.xla_optimized  # hundreds of training steps: run time, not compile time, dominates
def test_two_layer_attention_model_learns_induction():
    params = jtlens.init_params(CFG, jax.random.PRNGKey(0))
    _, _, score_before = induction_eval(params)
    params, losses = train(params, CFG, repeated_sequences(0), steps=3000, lr=2e-3, warmup=50,
                           progress=False)
    first, repeat, score = induction_eval(params)
    assert len(losses) == 3000 and np.mean(losses[-100:]) < np.mean(losses[:100])
    assert repeat < 0.5 * first, (first, repeat)
    # Induction needs a previous-token head first, so it appears in layer 1, not layer 0.
    assert score[1].max() > 0.3 and score[1].max() > 5 * score_before.max(), score
    assert score[1].max() > 3 * score[0].max(), score


@pytest.mark.slow
def test_train_takes_any_loss_and_checks_its_input():
    cfg = CFG.replace(n_layers=1)
    params = jtlens.init_params(cfg, jax.random.PRNGKey(0))
    data = np.arange(200) % cfg.d_vocab
    batches = random_batches(np.random.default_rng(0), data, batch=4, seq_len=16)
    target = jnp.ones(cfg.d_model)
    loss_fn = lambda p, _: jnp.sum((p["embed"]["W_E"][0] - target) ** 2)  # noqa: E731
    new, losses = train(params, cfg, batches, steps=20, lr=0.1, loss_fn=loss_fn, progress=False)
    assert losses[-1] < losses[0]
    assert new["embed"]["W_E"].shape == params["embed"]["W_E"].shape
    with pytest.raises(ValueError, match="ran out after 0 steps"):
        train(params, cfg, [], steps=3, progress=False)
    with pytest.raises(ValueError, match="need more than seq_len"):
        next(random_batches(np.random.default_rng(0), data[:10], 2, 16))
