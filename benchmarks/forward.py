"""Forward and run_with_cache (all hooks): jtlens vs TransformerLens 3.9 and 4.3, GPT-2-small, CPU.

    python -m benchmarks.forward      # `make bench` installs TL 4.3 for the bridge column

Prints compile time, steady-state medians and the ratio against the faster TransformerLens.
"""

from __future__ import annotations

import jax
import numpy as np
import torch

from benchmarks.common import arguments, bridge, gpt2_small_models, row, timed, tokens

SHAPES = [(1, 32), (8, 128)]


def main():
    args = arguments(__doc__)
    _, tl, model = gpt2_small_models()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; torch threads: TL 3.9 1, bridge 2")
    print(f"{'':<44} {'TL (best)':>13} {'jtlens':>13} {'speed-up':>9}")
    for batch, pos in SHAPES:
        toks = tokens(batch, pos)
        tt = torch.as_tensor(toks)
        with torch.no_grad():
            ref = tl(tt).numpy()
            _, tl_fwd = timed(lambda: tl(tt), args.repeats)
            _, tl_cache = timed(lambda: tl.run_with_cache(tt), args.repeats)
        refs_fwd, refs_cache = {"TL 3.9": tl_fwd}, {"TL 3.9": tl_cache}
        if not args.no_bridge:
            for task, refs in (("forward", refs_fwd), ("run_with_cache", refs_cache)):
                res = bridge(task, tokens=toks.tolist(), repeats=args.repeats)
                if res:
                    refs["TL 4.3"] = res["median_s"]
        compile_fwd, ours_fwd = timed(lambda: jax.block_until_ready(model(toks)), args.repeats)
        compile_cache, ours_cache = timed(lambda: jax.block_until_ready(model.run_with_cache(toks)),
                                          args.repeats)
        diff = float(np.abs(np.asarray(model(toks)) - ref).max())
        for label, refs, ours, first in (("forward", refs_fwd, ours_fwd, compile_fwd),
                                         ("run_with_cache (all hooks)", refs_cache, ours_cache, compile_cache)):
            best = min(refs, key=refs.get)
            others = ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in refs.items())
            print(row(f"{label} {batch}x{pos}", refs[best], ours,
                      f"[ref {best}; {others}; jtlens first call {first:.2f} s]"))
        print(f"  max |logit diff| jtlens vs TL 3.9 at {batch}x{pos}: {diff:.2e}")


if __name__ == "__main__":
    main()
