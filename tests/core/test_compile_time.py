"""What keeps a notebook's first calls short: reading an ActivationCache compiles nothing on
CPU, and the per-prompt programs (`quick_jit`) compute what `jax.jit` computes."""

import contextlib

import jax
import numpy as np

import jtlens
from jtlens.core.compilation_cache import quick_compile_options, quick_jit

CFG = jtlens.Config(n_layers=3, d_model=16, n_heads=2, d_head=8, d_mlp=32, d_vocab=40, n_ctx=12,
                    act_fn="gelu")


@contextlib.contextmanager
def counting_compiles():
    """Yields a list that gets one entry per XLA compile inside the block."""
    compiles = []

    def listen(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield compiles
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


def test_cache_reads_compile_nothing_and_equal_the_stacks():
    model = jtlens.HookedTransformer(CFG)
    tokens = np.random.default_rng(0).integers(0, CFG.d_vocab, (1, 7))
    _, cache = model.run_with_cache(tokens)
    stacked = {k: np.asarray(v) for k, v in cache.stacked.items()}
    with counting_compiles() as compiles:
        z1 = cache["z", 1]
        pattern = cache["blocks.2.attn.hook_pattern"]
        every = cache.cache_dict
        cache.remove_batch_dim()
        resid = cache["resid_post", 0]
    assert compiles == [], f"{len(compiles)} programs compiled reading the cache"
    np.testing.assert_array_equal(z1, stacked["attn.hook_z"][1])
    np.testing.assert_array_equal(pattern, stacked["attn.hook_pattern"][2])
    np.testing.assert_array_equal(every["blocks.0.hook_mlp_out"], stacked["hook_mlp_out"][0])
    np.testing.assert_array_equal(resid, stacked["hook_resid_post"][0, 0])
    assert isinstance(z1, jax.Array) and z1.shape == (1, 7, CFG.n_heads, CFG.d_head)
    # a layer read owns its buffer: keeping it does not keep the whole stack alive
    assert not np.shares_memory(np.asarray(z1), np.asarray(cache.stacked["attn.hook_z"]))


def test_cache_reads_under_jit_index_the_traced_stack():
    model = jtlens.HookedTransformer(CFG)
    _, cache = model.run_with_cache(np.arange(5)[None])
    read = jax.jit(lambda c: c["resid_pre", 2] * 2)(cache.with_model(None))
    np.testing.assert_allclose(read, np.asarray(cache["resid_pre", 2]) * 2)


def test_quick_jit_equals_jit_and_exposes_its_stages():
    f = lambda x: jax.nn.gelu(x @ x.T).sum(-1)
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 16))
    quick = quick_jit(f)
    np.testing.assert_allclose(quick(x), jax.jit(f)(x), rtol=1e-6, atol=1e-6)
    assert quick.lower(x).compile() is not None  # lower/trace/eval_shape reach the jitted function
    if jax.default_backend() == "cpu":
        assert quick_compile_options() == {"xla_cpu_use_fusion_emitters": False}
