"""Test setup: offline, deterministic, full-precision matmuls, one torch thread.

TransformerLens 3.9 oversubscribes threads on small machines, hence torch.set_num_threads(1).
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

try:
    import torch  # noqa: E402

    torch.set_num_threads(1)
except ImportError:  # the core library runs without torch; oracle tests skip themselves
    pass


# ----------------------------------------------------------------------------- bad-input suite
# Shared by tests/test_bad_inputs_*.py: tiny models built once per session.
import re  # noqa: E402

import pytest  # noqa: E402


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
