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
