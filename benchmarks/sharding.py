"""The head sweep on sharded params: one device vs 8 host devices, meshes 8x1, 2x4 and 1x8.

    python -m benchmarks.sharding [--repeats 3] [--pos 16]

GPT-2-small (random weights), two prompts, `get_act_patch_attn_head_out_all_pos` with a
logit-difference metric. TransformerLens 3.9 runs the same sweep once (one forward per head) as
the reference. jtlens runs it unsharded on one device, then on 8 devices as ("data", "model")
meshes: 8x1 splits the patches only (every device holds the whole model), 1x8 splits the params
only (tensor parallel), 2x4 both. Each row gives the warm time (median of `--repeats`), the
first call (compiling), the speed-up over TransformerLens and over one device, the largest
per-device parameter bytes, and the max difference from one device's result.

On a CPU, the 8 devices are forced host devices (XLA_FLAGS, set below) sharing the machine's
cores, so the sharded rows measure the partitioning's overhead, not extra hardware; on a
machine with 8 accelerators the same script measures the real thing.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TQDM_DISABLE", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import jtlens  # noqa: E402
import jtlens.tl.patching as jp  # noqa: E402
from benchmarks.common import gpt2_small_dir, jtlens_from_tl, timed, tl39_model, tokens  # noqa: E402
from jtlens.io.sharding import bytes_per_device, make_mesh  # noqa: E402

ANSWERS = (262, 1110)
MESHES = [(8, 1), (2, 4), (1, 8)]


def logit_diff(logits):
    return (logits[:, -1, ANSWERS[0]] - logits[:, -1, ANSWERS[1]]).mean()


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=3, help="warm jtlens runs (median)")
    ap.add_argument("--pos", type=int, default=16, help="tokens per prompt")
    args = ap.parse_args()
    import transformer_lens.patching as tlp

    if len(jax.devices()) < 8:
        raise SystemExit(f"needs 8 devices, found {len(jax.devices())} (XLA_FLAGS={os.environ['XLA_FLAGS']!r})")
    tl = tl39_model(gpt2_small_dir())
    base = jtlens_from_tl(tl)
    clean, corrupted = tokens(2, args.pos, seed=0), tokens(2, args.pos, seed=1)
    with torch.no_grad():
        _, tl_cache = tl.run_with_cache(torch.as_tensor(clean))
        t = time.perf_counter()
        tlp.get_act_patch_attn_head_out_all_pos(tl, torch.as_tensor(corrupted), tl_cache, logit_diff)
        tl_s = time.perf_counter() - t
    print(f"jax {jax.__version__}, {len(jax.devices())} x {jax.devices()[0].device_kind}; GPT-2-small "
          f"(random), 2 prompts x {args.pos} tokens; head sweep (12 x 12 heads)")
    print(f"TransformerLens 3.9: {tl_s:.2f} s")
    print(f"{'jtlens':<14} {'warm':>9} {'first':>9} {'vs TL':>8} {'vs 1 dev':>9} "
          f"{'params/device':>14} {'max |diff|':>11}")
    one = None
    for shape in [None] + MESHES:
        if shape is None:
            model, mesh, label = base, None, "1 device"
        else:
            mesh = make_mesh(*shape)
            model = jtlens.HookedTransformer(base.cfg, jtlens.shard_params(base.params, base.cfg, mesh))
            label = f"{shape[0]}x{shape[1]} mesh"
        _, cache = model.run_with_cache(clean)

        def sweep():
            return jax.block_until_ready(jp.get_act_patch_attn_head_out_all_pos(
                model, corrupted, cache, logit_diff, sharding=mesh, progress=False))

        first, warm = timed(sweep, args.repeats)
        result = np.asarray(sweep())
        one = (warm, result) if one is None else one
        per_device = max(bytes_per_device(model.params).values())
        print(f"{label:<14} {warm:>8.2f}s {first:>8.2f}s {tl_s / warm:>7.2f}x {one[0] / warm:>8.2f}x "
              f"{per_device / 2**20:>11.0f} MiB {np.abs(result - one[1]).max():>11.1e}", flush=True)


if __name__ == "__main__":
    main()
