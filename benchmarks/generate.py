"""Greedy generation, 64 new tokens: jtlens vs Hugging Face generate vs TransformerLens 3.9 and
4.3 generate, GPT-2-small-shaped random weights, CPU.

    python -m benchmarks.generate      # `make bench` installs TL 4.3 for the bridge column

Prints tokens per second (steady state, median of repeats) at batch 1 and 8, jtlens's compile
time separately, and the ratio of jtlens to each reference. Every library decodes the same
prompts greedily with the key/value cache, without stopping at EOS; the script checks that
jtlens's tokens equal Hugging Face's.
"""

from __future__ import annotations

import jax
import numpy as np
import torch

from benchmarks.common import arguments, bridge, gpt2_small_models, timed, tokens

N_NEW = 64
PROMPT = 16


def hf_model(folder):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    hf.generation_config.eos_token_id = None  # decode all 64 tokens, as the others do
    hf.generation_config.pad_token_id = 0
    return hf


def hf_time(hf, toks, repeats):
    """Hugging Face at its best thread count on this machine: (seconds, tokens)."""
    tt = torch.as_tensor(toks)
    run = lambda: hf.generate(tt, attention_mask=torch.ones_like(tt), max_new_tokens=N_NEW,  # noqa: E731
                              do_sample=False)
    best = None
    for threads in (1, 2):
        torch.set_num_threads(threads)
        with torch.no_grad():
            _, median = timed(run, repeats)
        best = median if best is None else min(best, median)
    with torch.no_grad():
        return best, run().numpy()


def main():
    args = arguments(__doc__, repeats=3)
    folder, tl, model = gpt2_small_models()
    hf = hf_model(folder)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; GPT-2-small random weights, "
          f"prompt {PROMPT} tokens, {N_NEW} new tokens, greedy, KV cache")
    print(f"{'':<12} {'library':<12} {'tokens/s':>10} {'seconds':>9} {'jtlens speed-up':>16}")
    for batch in (1, 8):
        toks = tokens(batch, PROMPT, seed=batch)
        gen = lambda: jax.block_until_ready(model.generate(  # noqa: E731
            toks, max_new_tokens=N_NEW, do_sample=False, stop_at_eos=False, verbose=False))
        first, ours = timed(gen, args.repeats)
        out = np.asarray(gen())
        refs = {}
        refs["HF"], hf_out = hf_time(hf, toks, args.repeats)
        torch.set_num_threads(1)  # TL 3.9's best on this machine (see benchmarks/common.py)
        tt = torch.as_tensor(toks)
        with torch.no_grad():
            _, refs["TL 3.9"] = timed(lambda: tl.generate(
                tt, max_new_tokens=N_NEW, do_sample=False, stop_at_eos=False, verbose=False),
                args.repeats)
        if not args.no_bridge:
            res = bridge("generate", tokens=toks.tolist(), max_new_tokens=N_NEW,
                         repeats=args.repeats)
            if res:
                refs["TL 4.3"] = res["median_s"]
        rate = lambda s: batch * N_NEW / s  # noqa: E731
        print(f"{'batch ' + str(batch):<12} {'jtlens':<12} {rate(ours):>10.1f} {ours:>9.3f} "
              f"{'':>16}  (compile {first - ours:.2f} s on the first call)")
        for name, s in refs.items():
            print(f"{'':<12} {name:<12} {rate(s):>10.1f} {s:>9.3f} {s / ours:>15.2f}x")
        same = (out == hf_out).mean()
        print(f"{'':<12} tokens equal to Hugging Face's: {same:.1%}")


if __name__ == "__main__":
    main()
