"""Runs one timing task on TransformerLens 4.3's TransformerBridge (compatibility mode).

Invoked by benchmarks/common.py:bridge with PYTHONPATH pointing at .tl43; prints one JSON line
of timings and saves result arrays to the given .npz.
"""

import json
import statistics
import sys
import time

import numpy as np
import torch


def main():
    task, args = sys.argv[1], json.loads(sys.argv[2])
    torch.set_num_threads(int(args.get("threads", 2)))
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(args["folder"], device="cpu", dtype=torch.float32)
    bridge.enable_compatibility_mode(disable_warnings=True)
    tokens = torch.as_tensor(np.asarray(args["tokens"]))
    arrays = {}

    def timed(fn):
        t = time.perf_counter()
        fn()
        first = time.perf_counter() - t
        runs = []
        for _ in range(args.get("repeats", 5)):
            t = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - t)
        return first, statistics.median(runs)

    if task == "grad_cache":  # backward hooks on every named hook, one backward per call
        good, bad = args["answers"]
        grads = {}
        for name in args["names"]:
            bridge.add_hook(name, lambda g, hook: grads.__setitem__(hook.name, g), dir="bwd")

        def backward():
            logits = bridge(tokens)
            (logits[:, -1, good] - logits[:, -1, bad]).mean().backward()

        first, median = timed(backward)
        arrays["embed_grad"] = grads["hook_embed"].detach().numpy()
        np.savez(args["out"], **arrays)
        print(json.dumps({"first_s": first, "median_s": median}))
        return

    with torch.no_grad():
        if task == "generate":  # greedy, the KV cache, no stop at EOS (benchmarks/generate.py)
            run = lambda: bridge.generate(tokens, max_new_tokens=args["max_new_tokens"],  # noqa: E731
                                          do_sample=False, stop_at_eos=False, verbose=False)
            first, median = timed(run)
        elif task == "forward":
            first, median = timed(lambda: bridge(tokens))
            arrays["logits"] = bridge(tokens).numpy()
        elif task == "run_with_cache":
            first, median = timed(lambda: bridge.run_with_cache(tokens))
        elif task.startswith("get_act_patch_"):  # one sweep (hundreds of forwards), timed once
            from transformer_lens import patching

            _, cache = bridge.run_with_cache(torch.as_tensor(np.asarray(args["clean"])))
            good, bad = args["answers"]
            metric = lambda logits: (logits[:, -1, good] - logits[:, -1, bad]).mean()  # noqa: E731
            t = time.perf_counter()
            arrays["result"] = getattr(patching, task)(bridge, tokens, cache, metric).numpy()
            first = median = time.perf_counter() - t
        else:
            raise SystemExit(f"unknown task {task}")
    np.savez(args["out"], **arrays)
    print(json.dumps({"first_s": first, "median_s": median}))


if __name__ == "__main__":
    main()
