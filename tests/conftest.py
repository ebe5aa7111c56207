"""Test setup: offline, deterministic, full-precision matmuls, one torch thread, quick compiles.

TransformerLens 3.9 oversubscribes threads on small machines, hence torch.set_num_threads(1).

Most tests run tiny models, where XLA's optimisation passes cost far more than they save: the
suite compiles thousands of programs. JAX_DISABLE_MOST_OPTIMIZATIONS=1 (inherited by the
subprocess tests) compiles them quickly (measured: the fast loop 119 s -> 80 s). Tests marked
`xla_optimized` - the real checkpoints, the main job, training runs - compile as users do.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

try:
    import torch  # noqa: E402

    torch.set_num_threads(1)
except ImportError:  # the core library runs without torch; oracle tests skip themselves
    pass


# ----------------------------------------------------------------------------- compiled code

import gc  # noqa: E402

import pytest  # noqa: E402

MAX_CODE_MAPS = 30_000


def _memory_maps() -> int:
    try:
        with open("/proc/self/maps") as f:
            return sum(1 for _ in f)
    except OSError:  # not Linux: no per-process map limit to stay under
        return 0


@pytest.fixture(autouse=True)
def _bounded_compiled_code():
    """XLA maps each compiled program's code into memory (about 200 maps for a large unrolled
    one) and the suite compiles thousands; Linux caps a process at vm.max_map_count (65530
    here), past which the next compile segfaults. Drop JAX's compiled programs when the count
    gets large (measured: 25,000 maps after three minutes of generation tests)."""
    yield
    if _memory_maps() > MAX_CODE_MAPS:
        jax.clear_caches()
        gc.collect()


@pytest.fixture(autouse=True)
def _xla_optimized(request, monkeypatch):
    """Full XLA optimisation for tests marked `xla_optimized` (and their subprocesses)."""
    if request.node.get_closest_marker("xla_optimized") is None:
        yield
        return
    before = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", False)
    monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "0")
    yield
    jax.config.update("jax_disable_most_optimizations", before)


# ----------------------------------------------------------------------------- bad-input suite
# Shared by tests/*/test_bad_inputs_*.py: tiny models built once per session.
import re  # noqa: E402


def _one_line_error(excinfo, pattern: str):
    msg = str(excinfo.value)
    assert "\n" not in msg.strip(), f"multi-line error: {msg!r}"
    assert re.search(pattern, msg), f"{pattern!r} not in {msg!r}"


@pytest.fixture(scope="session")
def one_line_error():
    """`check(excinfo, pattern)`: the raised error is one line and names the problem (the regex
    `pattern` is found in its message)."""
    return _one_line_error


@pytest.fixture(scope="session")
def tiny():
    """(cfg, params, tokens [2, 6]) of a random 2-layer model with a 50-token vocabulary."""
    import jtlens

    cfg = jtlens.Config(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, d_vocab=50,
                        n_ctx=12, act_fn="gelu_new")
    params = jtlens.init_params(cfg, jax.random.PRNGKey(0))
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 6), 0, cfg.d_vocab)
    return cfg, params, tokens


@pytest.fixture(scope="session")
def tiny_model(tiny):
    """A HookedTransformer over `tiny` (no tokenizer)."""
    import jtlens

    cfg, params, _ = tiny
    return jtlens.HookedTransformer(cfg, params)


@pytest.fixture(scope="session")
def shipped():
    """The embedded jtlens-tiny model, with its tokenizer."""
    import jtlens

    return jtlens.HookedTransformer.from_pretrained("jtlens-tiny")


# ----------------------------------------------------------------------------- the real model
@pytest.fixture(scope="session")
def smollm2_hf(tmp_path_factory):
    """(transformers' float32 SmolLM2 from its GGUF, the GGUF tokenizer, its saved HF folder),
    dequantised once for the whole run: the folder lives where every xdist worker sees it."""
    from tests.oracle import smollm2_hf

    base = tmp_path_factory.getbasetemp()
    return smollm2_hf(base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base)


# ----------------------------------------------------------------------------- scheduling
# The files that take minutes (measured with --durations), collected first: `make test` gives
# each xdist worker a whole file at a time, so the two start on these and end on short files,
# rather than one worker finishing a long file alone. Only the order changes.
LONG_FILES = ("test_sharding.py", "test_patching_kv_reuse.py", "test_smollm2.py", "test_readme.py",
              "test_no_torch.py", "test_sae_smollm2.py", "test_train.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FILES)))
