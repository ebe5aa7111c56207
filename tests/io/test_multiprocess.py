"""Two processes on localhost (jax.distributed, 4 CPU devices each, one 2x4 mesh) run the head
sweep on sharded params and get the single-process, single-device result."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]  # the repository root (this file is tests/io/...)

# argv: "single", or "distributed <process id> <coordinator port>"
SCRIPT = """
import json, sys
import jax
if sys.argv[1] == "distributed":
    jax.distributed.initialize(f"127.0.0.1:{sys.argv[3]}", num_processes=2,
                               process_id=int(sys.argv[2]), local_device_ids=list(range(4)),
                               initialization_timeout=120)
jax.config.update("jax_default_matmul_precision", "highest")
import numpy as np
import jtlens
import jtlens.patching as jp
from jtlens.sharding import make_mesh, to_host

cfg = jtlens.Config(n_layers=2, d_model=32, n_heads=8, d_head=4, d_mlp=64, n_ctx=16, d_vocab=64,
                    act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary",
                    gated_mlp=True, n_key_value_heads=4, initializer_range=0.2)
clean, corrupted = np.random.default_rng(0).integers(0, 64, (2, 4, 6))
params = jtlens.init_params(cfg, jax.random.PRNGKey(1))
mesh = None
if sys.argv[1] == "distributed":
    assert jax.device_count() == 8 and jax.local_device_count() == 4, jax.devices()
    mesh = make_mesh(data=2, model=4)
    params = jtlens.shard_params(params, cfg, mesh)
    assert not params["blocks"]["attn"]["W_Q"].is_fully_addressable
model = jtlens.HookedTransformer(cfg, params)
_, cache = model.run_with_cache(clean)
metric = lambda logits: (logits[:, -1, 3] - logits[:, -1, 7]).mean()
heads = jp.get_act_patch_attn_head_out_all_pos(model, corrupted, cache, metric, chunk_size=8,
                                               sharding=mesh, progress=False)
print("RESULT", json.dumps(to_host(heads).tolist()), flush=True)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(argvs: list, devices: int, timeout: float = 600) -> list:
    """Run SCRIPT once per argv list, all at once; kill every child on failure or timeout."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    children = [subprocess.Popen([sys.executable, "-c", SCRIPT, *argv], env=env, cwd=ROOT,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for argv in argvs]
    outs = []
    try:
        deadline = time.monotonic() + timeout
        for child in children:
            outs.append(child.communicate(timeout=max(1, deadline - time.monotonic())))
    finally:
        for child in children:  # a hung or failed peer must not outlive the test
            if child.poll() is None:
                child.kill()
                child.wait()
    results = []
    for child, (out, err) in zip(children, outs):
        assert child.returncode == 0, err[-4000:]
        results.append(np.asarray(json.loads(out.split("RESULT", 1)[1])))
    return results


@pytest.mark.slow
def test_two_processes_sweep_like_one():
    (want,) = _run([["single"]], devices=1)
    port = str(_free_port())
    got = _run([["distributed", "0", port], ["distributed", "1", port]], devices=4)
    assert want.shape == (2, 8)
    for result in got:  # every process holds the whole result
        np.testing.assert_allclose(result, want, rtol=0, atol=1e-5 * np.abs(want).max())
