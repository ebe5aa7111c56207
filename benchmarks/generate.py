"""Greedy generation, 64 new tokens: jtlens vs Hugging Face generate vs TransformerLens 3.9 and
4.3 generate, on SmolLM2-135M (real weights) and GPT-2-small-shaped random weights, CPU.

    python -m benchmarks.generate      # `make bench` installs TL 4.3 for the bridge column

Prints generated tokens per second (steady state, median of repeats) at batch 1 and 8,
jtlens's compile time separately, and the ratio of each reference to jtlens. Every library
decodes the same prompts greedily with the key/value cache, without stopping at EOS; the script
checks that jtlens's tokens equal Hugging Face's.

A decode step reads every weight to produce one token per row, so its cost is set by how fast
the machine streams the weight matrices through its matrix kernels. The "matmul floor" rows time
exactly the model's matrix products per step and nothing else, looped in XLA (jtlens's compiler,
on the weights as the decode loop lays them out) and in torch: no library's generate can beat
its own floor, and "of floor" says how close jtlens gets to XLA's.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch

from benchmarks.common import ROOT, arguments, bridge, gpt2_small_dir, timed, tl39_model

N_NEW = 64
PROMPT = 16


def hf_model(folder):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    hf.generation_config.eos_token_id = None  # decode all 64 tokens, as the others do
    hf.generation_config.pad_token_id = 0
    return hf


def torch_best(run, repeats):
    """(median seconds at torch's best thread count on this machine, last result)."""
    best = None
    for threads in (1, 2):
        torch.set_num_threads(threads)
        with torch.no_grad():
            _, median = timed(run, repeats)
        best = median if best is None else min(best, median)
    with torch.no_grad():
        return best, run()


def matrices(model, batch):
    """The 2D matrices of one decode step, as the generation loop lays them out."""
    from jtlens.core.decode_layout import FlatMatrix, decode_layout

    flat = decode_layout(model.params, input_last=batch > 1)
    return [m for m in jax.tree_util.tree_leaves(flat, is_leaf=lambda x: isinstance(x, FlatMatrix))
            if isinstance(m, FlatMatrix)]


def xla_floor(mats, batch, repeats, steps=16):
    """Seconds per step of the matrix products alone, in a compiled loop."""
    rng = np.random.default_rng(0)
    n_in = lambda m: m.w.shape[1] if m.input_last else m.w.shape[0]  # noqa: E731
    xs = [jnp.asarray(rng.normal(size=(batch, n_in(m))), jnp.float32) for m in mats]

    @jax.jit
    def loop(ws, xs):
        def step(_, s):  # each product depends on the step, so none is hoisted out of the loop
            return s + sum(jnp.sum(jnp.einsum("bi,oi->bo", x + s, m.w) if m.input_last
                                   else (x + s) @ m.w) for m, x in zip(ws, xs)) * 1e-9
        return jax.lax.fori_loop(0, steps, step, jnp.float32(0))

    _, median = timed(lambda: loop(mats, xs).block_until_ready(), repeats)
    return median / steps


def torch_floor(mats, batch, repeats):
    """The same products in torch (nn.Linear's [out, in] weights), at its best thread count."""
    ws = [torch.as_tensor(np.asarray(m.w if m.input_last else m.w.T)).contiguous() for m in mats]
    xs = [torch.randn(batch, w.shape[1]) for w in ws]

    def step():
        s = torch.zeros(())
        for w, x in zip(ws, xs):
            s = s + torch.nn.functional.linear(x + s, w).sum() * 1e-9
        return s

    return torch_best(step, repeats)[0]


def gpt2_small():
    from benchmarks.common import jtlens_from_tl

    folder = gpt2_small_dir()
    tl = tl39_model(folder)
    return "GPT-2-small (random)", folder, tl, jtlens_from_tl(tl)


def smollm2():
    import jtlens
    from benchmarks.first_contact import hf_folder

    sys.path.insert(0, str(ROOT))
    from tests.oracle import tl_from_folder

    folder = hf_folder(Path(tempfile.gettempdir()) / "jtlens-bench")
    return ("SmolLM2-135M", folder, tl_from_folder(folder),
            jtlens.HookedTransformer.from_pretrained(str(folder), progress=False))


def main():
    args = arguments(__doc__, repeats=3)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; prompt {PROMPT} tokens, {N_NEW} "
          f"new tokens, greedy, KV cache")
    print(f"{'':<30} {'library':<24} {'tokens/s':>9} {'jtlens speed-up':>16}")
    for build in (smollm2, gpt2_small):
        name, folder, tl, model = build()
        hf = hf_model(folder)
        vocab = min(model.cfg.d_vocab, hf.config.vocab_size)
        for batch in (1, 8):
            toks = np.random.default_rng(batch).integers(0, vocab, (batch, PROMPT))
            gen = lambda: jax.block_until_ready(model.generate(  # noqa: E731
                toks, max_new_tokens=N_NEW, do_sample=False, stop_at_eos=False, verbose=False))
            first, ours = timed(gen, args.repeats)
            out = np.asarray(gen())
            tt = torch.as_tensor(toks)
            refs = {}
            refs["Hugging Face"], hf_out = torch_best(lambda: hf.generate(  # noqa: B023
                tt, attention_mask=torch.ones_like(tt), max_new_tokens=N_NEW, do_sample=False),
                args.repeats)
            torch.set_num_threads(1)  # TL 3.9's best on this machine (see benchmarks/common.py)
            with torch.no_grad():
                _, refs["TransformerLens 3.9"] = timed(lambda: tl.generate(  # noqa: B023
                    tt, max_new_tokens=N_NEW, do_sample=False, stop_at_eos=False, verbose=False),
                    args.repeats)
            if not args.no_bridge:
                res = bridge("generate", folder=str(folder), tokens=toks.tolist(),
                             max_new_tokens=N_NEW, repeats=args.repeats)
                if res:
                    refs["TransformerLens 4.3"] = res["median_s"]
            mats = matrices(model, batch)
            floor = xla_floor(mats, batch, args.repeats)
            refs["matmul floor, torch"] = torch_floor(mats, batch, args.repeats) * N_NEW
            rate = lambda s: batch * N_NEW / s  # noqa: E731
            print(f"{name + f', batch {batch}':<30} {'jtlens':<24} {rate(ours):>9.1f} "
                  f"{'':>16}  (compile {first - ours:.1f} s on the first call)")
            for ref, s in refs.items():
                print(f"{'':<30} {ref:<24} {rate(s):>9.1f} {s / ours:>15.2f}x")
            print(f"{'':<30} {'matmul floor, XLA':<24} {rate(floor * N_NEW):>9.1f} "
                  f"{'':>16}  jtlens at {floor * N_NEW / ours:.0%} of the floor's speed")
            print(f"{'':<30} tokens equal to Hugging Face's: {(out == hf_out.numpy()).mean():.1%}")


if __name__ == "__main__":
    main()
