"""Peak host memory loading a ~300M-parameter random Llama-style checkpoint: whole vs streamed
onto 8 host devices.

    python -m benchmarks.streaming_load [--folder /tmp/jtlens-llama-300m]

The checkpoint (float32 safetensors in 4 files, written once with numpy) is loaded in a fresh
subprocess per mode, each reporting its peak RSS (`ru_maxrss`):

- whole: `jtlens.loading.load(folder)` (one device);
- whole, then sharded: the same, then `jtlens.shard_params` over a 1x8 mesh;
- streamed: `load(folder, mesh=mesh)`, each layer placed on the devices as it is converted.

Host devices live in the process's own memory, so every mode's figure includes the device
copies of the params (1x the model when fully sharded, more for replicated tensors).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

LLAMA_300M = dict(hidden_size=1024, num_hidden_layers=16, num_attention_heads=16,
                  num_key_value_heads=8, intermediate_size=4096, vocab_size=32000,
                  max_position_embeddings=2048, rms_norm_eps=1e-5, tie_word_embeddings=False,
                  architectures=["LlamaForCausalLM"], model_type="llama")


def write_random_llama(folder: Path, hf: dict = LLAMA_300M, n_files: int = 4, seed: int = 0) -> int:
    """A Llama-layout Hugging Face folder of random float32 weights in `n_files` safetensors
    shards with an index; returns the parameter count. Written tensor by tensor."""
    from safetensors.numpy import save_file

    D, H, Hkv, M, V = (hf["hidden_size"], hf["num_attention_heads"], hf["num_key_value_heads"],
                       hf["intermediate_size"], hf["vocab_size"])
    Dh = D // H
    shapes = {"model.embed_tokens.weight": (V, D), "model.norm.weight": (D,), "lm_head.weight": (V, D)}
    for l in range(hf["num_hidden_layers"]):
        p = f"model.layers.{l}"
        shapes.update({f"{p}.self_attn.q_proj.weight": (H * Dh, D), f"{p}.self_attn.k_proj.weight": (Hkv * Dh, D),
                       f"{p}.self_attn.v_proj.weight": (Hkv * Dh, D), f"{p}.self_attn.o_proj.weight": (D, H * Dh),
                       f"{p}.mlp.gate_proj.weight": (M, D), f"{p}.mlp.up_proj.weight": (M, D),
                       f"{p}.mlp.down_proj.weight": (D, M), f"{p}.input_layernorm.weight": (D,),
                       f"{p}.post_attention_layernorm.weight": (D,)})
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = list(shapes)
    weight_map = {}
    for i, part in enumerate(np.array_split(np.arange(len(names)), n_files)):
        fname = f"model-{i + 1:05d}-of-{n_files:05d}.safetensors"
        tensors = {}
        for k in part:
            n = names[k]
            tensors[n] = (1.0 + 0.1 * rng.standard_normal(shapes[n]) if n.endswith("norm.weight")
                          else 0.02 * rng.standard_normal(shapes[n])).astype(np.float32)
            weight_map[n] = fname
        save_file(tensors, str(folder / fname))
        del tensors
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(hf))
    return int(sum(np.prod(s) for s in shapes.values()))


CHILD = """
import resource, sys, time
import jax
from jtlens.io.loading import load
from jtlens.io.sharding import bytes_per_device, make_mesh, shard_params
mode, folder = sys.argv[1], sys.argv[2]
t = time.perf_counter()
if mode == "whole":
    cfg, params, _ = load(folder, progress=False)
elif mode == "whole_then_sharded":
    cfg, params, _ = load(folder, progress=False)
    params = shard_params(params, cfg, make_mesh(1, 8))
else:
    cfg, params, _ = load(folder, progress=False, mesh=make_mesh(1, 8))
jax.block_until_ready(params)
per_device = max(bytes_per_device(params).values())
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, per_device, time.perf_counter() - t)
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--folder", default="/tmp/jtlens-llama-300m")
    args = ap.parse_args()
    folder = Path(args.folder)
    if not (folder / "config.json").exists():
        n = write_random_llama(folder)
    else:
        n = int(sum(np.prod(s) for s in _shapes_from_files(folder)))
    print(f"checkpoint: {folder}, {n / 1e6:.0f}M params, {4 * n / 2**30:.2f} GiB in float32")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu", TQDM_DISABLE="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent.parent),
                                                      env.get("PYTHONPATH")]))
    rows = {}
    for mode in ("whole", "whole_then_sharded", "streamed"):
        proc = subprocess.run([sys.executable, "-c", CHILD, mode, str(folder)], env=env,
                              capture_output=True, text=True, timeout=1800)
        if proc.returncode:
            raise SystemExit(f"{mode} failed:\n{proc.stderr[-3000:]}")
        out = proc.stdout.split()
        rss, per_device, secs = int(out[0]), int(out[1]), float(out[2])
        rows[mode] = rss
        print(f"{mode:>20}: peak RSS {rss / 2**30:6.2f} GiB ({rss / (4 * n):.2f}x the float32 model), "
              f"largest device holds {per_device / 2**30:.2f} GiB, {secs:.0f} s", flush=True)
    print(f"streamed / whole peak RSS: {rows['streamed'] / rows['whole']:.2f}; "
          f"streamed / whole-then-sharded: {rows['streamed'] / rows['whole_then_sharded']:.2f}")


def _shapes_from_files(folder: Path):
    from safetensors import safe_open

    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="numpy") as h:
            for k in h.keys():
                yield h.get_slice(k).get_shape()


if __name__ == "__main__":
    main()
