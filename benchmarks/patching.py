"""Activation-patching sweeps: jtlens vs TransformerLens 3.9 and 4.3 on GPT-2-small, CPU.

    python -m benchmarks.patching      # `make bench` installs TL 4.3 for the bridge column

Two prompts of 16 tokens, logit-difference metric. TransformerLens runs one forward per patch
(192 for resid_pre by layer x position, 720 for every head's output/q/k/v/pattern), so each
sweep is timed once; jtlens is timed on its first call (compiling) and warm (median of
`--repeats`). Ratios are against the faster TransformerLens; the result columns give the max
abs difference from each TransformerLens's result.

By-position sweeps can reuse the corrupted run's keys and values
(`activation_sweep(reuse_kv=True)`); the "KV reuse" rows time the sweeps of
`get_act_patch_resid_pre` and `get_act_patch_attn_head_out_by_pos` with and without it, on the
same inputs (the ratio column is no reuse / reuse).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TQDM_DISABLE", "1")  # TransformerLens draws a progress bar per sweep

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import jtlens.tl.patching as jp  # noqa: E402
from benchmarks.common import bridge, gpt2_small_dir, jtlens_from_tl, row, timed, tl39_model, tokens  # noqa: E402

SWEEPS = ["get_act_patch_resid_pre", "get_act_patch_attn_head_all_pos_every"]
REUSE_SWEEPS = ["get_act_patch_resid_pre", "get_act_patch_attn_head_out_by_pos"]
ANSWERS = (262, 1110)


def logit_diff(logits):
    """The metric, written once for torch and JAX logits alike."""
    return (logits[:, -1, ANSWERS[0]] - logits[:, -1, ANSWERS[1]]).mean()


def reuse_rows(model, corrupted, cache, name: str, repeats: int):
    """Print warm and first-call times of sweep `name` without and with key/value reuse."""
    fn = getattr(jp, name)
    template = jp.per_layer_template(model.cfg, fn.activation_name)
    sizes = {"layer": model.cfg.n_layers, "pos": corrupted.shape[1], "head": model.cfg.n_heads}
    rows = np.indices([sizes[a] for a in fn.index_axis_names]).reshape(len(fn.index_axis_names), -1).T
    clean = cache[f"blocks.*.{template}"]
    results, times = {}, {}
    for reuse in (False, True):
        # a fresh metric object per variant, so no program compiled earlier (the sweeps above
        # use logit_diff) is reused and the first call includes compilation
        metric = lambda logits: logit_diff(logits)  # noqa: E731
        run = lambda: jp.activation_sweep(model.params, model.cfg, corrupted, clean, metric, template,  # noqa: E731
                                          fn.setter, rows, progress=False, reuse_kv=reuse)
        times[reuse] = timed(run, repeats)
        results[reuse] = run()
    (first, warm), (first_r, warm_r) = times[False], times[True]
    print(f"{name} KV reuse  max |diff| {np.abs(results[True] - results[False]).max():.1e}")
    print(f"{'':<44} {'no reuse':>13} {'reuse':>13} {'speed-up':>9}")
    print(row("  warm", warm, warm_r))
    print(row("  including compile (first call)", first, first_r))


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=3, help="warm jtlens runs (median)")
    ap.add_argument("--no-bridge", action="store_true", help="skip TransformerLens 4.3")
    ap.add_argument("--pos", type=int, default=16, help="tokens per prompt")
    ap.add_argument("--only", choices=SWEEPS + ["reuse"], help="run one sweep (reuse: the KV reuse rows)")
    args = ap.parse_args()
    import transformer_lens.patching as tlp

    folder = gpt2_small_dir()
    tl = tl39_model(folder)
    model = jtlens_from_tl(tl)
    clean, corrupted = tokens(2, args.pos, seed=0), tokens(2, args.pos, seed=1)
    _, tl_cache = tl.run_with_cache(torch.as_tensor(clean))
    _, cache = model.run_with_cache(clean)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; GPT-2-small (random), 2 prompts x {args.pos} tokens; "
          f"torch threads: TL 3.9 1, bridge 2")
    print(f"{'':<44} {'TL (best)':>13} {'jtlens':>13} {'speed-up':>9}")
    for name in [] if args.only == "reuse" else [args.only] if args.only else SWEEPS:
        with torch.no_grad():
            t = time.perf_counter()
            ref = getattr(tlp, name)(tl, torch.as_tensor(corrupted), tl_cache, logit_diff).numpy()
            refs, results = {"TL 3.9": time.perf_counter() - t}, {"TL 3.9": ref}
        if not args.no_bridge:
            res = bridge(name, tokens=corrupted.tolist(), clean=clean.tolist(), answers=list(ANSWERS))
            if res:
                refs["TL 4.3"], results["TL 4.3"] = res["median_s"], res["arrays"]["result"]
        sweep = getattr(jp, name)
        first, warm = timed(lambda: jax.block_until_ready(sweep(model, corrupted, cache, logit_diff,
                                                                progress=False)), args.repeats)
        ours = np.asarray(sweep(model, corrupted, cache, logit_diff, progress=False))
        best = min(refs, key=refs.get)
        others = ", ".join(f"{k} {v:.1f} s" for k, v in refs.items())
        diffs = ", ".join(f"vs {k} {float(np.abs(ours - r).max()):.1e}" for k, r in results.items())
        print(f"{name} {tuple(ours.shape)}  [{others}]")
        print(row("  warm", refs[best], warm, f"[ref {best}]"))
        print(row("  including compile (first call)", refs[best], first, f"[ref {best}]"))
        print(f"  max |result diff|: {diffs}")
    if args.only in (None, "reuse"):
        for name in REUSE_SWEEPS:
            reuse_rows(model, corrupted, cache, name, args.repeats)


if __name__ == "__main__":
    main()
