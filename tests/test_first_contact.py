"""What makes a second run cheap: the persistent compilation cache and prompt-length buckets."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jtlens
from jtlens.report import analysis as report
from jtlens.compilation_cache import bucket, enable_compilation_cache

FAMILY_KNOBS = [
    dict(),  # GPT-2 style: LayerNorm, learned positions
    dict(normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=8,
         gated_mlp=True, act_fn="silu", n_key_value_heads=1, final_rms=True),
    dict(use_attn_result=True, use_split_qkv_input=True, use_hook_mlp_in=True, use_attn_in=False),
]


def test_bucket_lengths():
    assert [bucket(n) for n in (1, 11, 16, 17, 64, 65, 129, 300)] == [16, 16, 16, 32, 64, 80, 160, 320]
    assert bucket(11, limit=12) == 12 and bucket(12, limit=12) == 12
    assert all(bucket(n) >= n and bucket(n) - n < max(16, n // 4 + 1) for n in range(1, 2000))


@pytest.mark.parametrize("knobs", FAMILY_KNOBS, ids=["ln-learned", "rms-rotary-gqa", "split-qkv"])
@pytest.mark.slow
def test_a_padded_run_cut_back_equals_the_plain_run(knobs):
    """Every hook (optional ones included) of a causal model, run on right-padded tokens and cut
    back with first_positions, equals the run on the tokens alone."""
    cfg = jtlens.Config(**{**dict(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32,
                                  d_vocab=50, n_ctx=40, act_fn="gelu_new"), **knobs})
    model = jtlens.HookedTransformer(cfg, jtlens.init_params(cfg, jax.random.PRNGKey(0)))
    tokens = jax.random.randint(jax.random.PRNGKey(1), (1, 11), 0, cfg.d_vocab)
    logits, cache = model.run_with_cache(tokens)
    padded_logits, padded = report._run_bucketed(model, tokens, None)
    assert padded_logits.shape == logits.shape
    np.testing.assert_allclose(padded_logits, logits, atol=1e-5, rtol=1e-5)
    assert padded.keys() == cache.keys()
    for name in cache.keys():
        assert padded[name].shape == cache[name].shape, name
        np.testing.assert_allclose(padded[name], cache[name], atol=1e-5, rtol=1e-5, err_msg=name)


@pytest.mark.slow
def test_first_positions_needs_the_batch_axis():
    cfg = jtlens.Config(n_layers=1, d_model=8, n_heads=2, d_head=4, d_mlp=16, d_vocab=20, n_ctx=8,
                        act_fn="relu")
    model = jtlens.HookedTransformer(cfg, jtlens.init_params(cfg, jax.random.PRNGKey(0)))
    _, cache = model.run_with_cache(jnp.arange(6)[None])
    with pytest.raises(ValueError, match="needs the batch axis"):
        cache.remove_batch_dim().first_positions(3)


def test_enable_compilation_cache_writes_compiled_programs(tmp_path):
    folder = enable_compilation_cache(tmp_path / "xla")
    try:
        jax.jit(lambda x: jnp.sin(x) * 3.25 + 0.5)(jnp.arange(7.0)).block_until_ready()
        assert any(folder.iterdir()), "no compiled program was written"
    finally:
        jax.config.update("jax_compilation_cache_dir", None)


@pytest.mark.slow  # two processes of the jtlens command on the embedded model
def test_the_command_keeps_compiled_programs_unless_told_not_to(tmp_path):
    env = dict(os.environ, JTLENS_CACHE=str(tmp_path / "on"))
    run = [sys.executable, "-m", "jtlens.cli", "run", "The cat sat", "--model", "jtlens-tiny",
           "--out", str(tmp_path / "report")]
    subprocess.run(run, env=env, check=True, capture_output=True)
    assert any((tmp_path / "on" / "xla").iterdir())
    assert [p.name.split("-")[0] for p in (tmp_path / "on" / "remembered").iterdir()] == ["induction"]
    env = dict(env, JTLENS_CACHE=str(tmp_path / "off"), JTLENS_COMPILATION_CACHE="0")
    subprocess.run(run, env=env, check=True, capture_output=True)
    assert not (tmp_path / "off" / "xla").exists()
    assert not (tmp_path / "off" / "remembered").exists()
