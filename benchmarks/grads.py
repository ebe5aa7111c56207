"""Gradient of a logit difference w.r.t. every hook: jtlens `grad_cache` (one jitted backward)
vs TransformerLens 3.9 and 4.3 backward hooks, GPT-2-small (random weights), CPU.

    python -m benchmarks.grads      # `make bench` installs TL 4.3 for the bridge column
"""

from __future__ import annotations

import argparse

import jax
import numpy as np
import torch

import jtlens
from benchmarks.common import bridge, gpt2_small_dir, jtlens_from_tl, row, timed, tl39_model, tokens

SHAPES = [(1, 32), (4, 64)]
GOOD, BAD = 11, 12


def logit_diff(logits):
    return (logits[:, -1, GOOD] - logits[:, -1, BAD]).mean()


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-bridge", action="store_true", help="skip TransformerLens 4.3")
    args = ap.parse_args()
    tl = tl39_model(gpt2_small_dir())
    model = jtlens_from_tl(tl)
    names = jtlens.hook_names(model.cfg)
    grads = {}
    for name in names:
        tl.add_hook(name, lambda g, hook: grads.__setitem__(hook.name, g), dir="bwd")
    step = jax.jit(lambda p, t: jtlens.grads.grad_cache(p, model.cfg, t, logit_diff))
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; {len(names)} hooks; "
          f"torch threads: TL 3.9 1, bridge 2")
    print(f"{'':<44} {'TL (best)':>13} {'jtlens':>13} {'speed-up':>9}")
    for batch, pos in SHAPES:
        toks = tokens(batch, pos)
        tt = torch.as_tensor(toks)

        def tl_backward():
            logit_diff(tl(tt)).backward()

        _, tl_s = timed(tl_backward, args.repeats)
        refs = {"TL 3.9": tl_s}
        ref_embed = grads["hook_embed"].numpy()
        bridge_embed = None
        if not args.no_bridge:
            res = bridge("grad_cache", tokens=toks.tolist(), names=names, answers=[GOOD, BAD],
                         repeats=args.repeats)
            if res:
                refs["TL 4.3"] = res["median_s"]
                bridge_embed = res.get("arrays", {}).get("embed_grad")
        first, ours = timed(lambda: jax.block_until_ready(step(model.params, toks)), args.repeats)
        _, gcache = step(model.params, toks)
        best = min(refs, key=refs.get)
        others = ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in refs.items())
        print(row(f"grad of logit diff, all hooks {batch}x{pos}", refs[best], ours,
                  f"[ref {best}; {others}; jtlens first call {first:.2f} s]"))
        diff = float(np.abs(np.asarray(gcache["hook_embed"]) - ref_embed).max())
        print(f"  max |d/d hook_embed| diff jtlens vs TL 3.9: {diff:.2e} "
              f"(scale {np.abs(ref_embed).max():.2e})")
        if bridge_embed is not None:
            diff = float(np.abs(np.asarray(gcache["hook_embed"]) - bridge_embed).max())
            print(f"  max |d/d hook_embed| diff jtlens vs TL 4.3: {diff:.2e}")


if __name__ == "__main__":
    main()
