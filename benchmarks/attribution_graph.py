"""Attribution graphs on SmolLM2-135M with random TopK transcoders: time and peak memory by
prompt length.

    python -m benchmarks.attribution_graph [--tokens 16 128 1024] [--d-transcoder 2304] [--k 8]
        [--max-feature-nodes 256] [--batch-size 32]

Each length runs in its own process (so the peak memory is that run's): the transcoders are
random TopK (k active features per layer and position, 30 layers), the prompt is the first
N tokens of the CPython-docstrings corpus. It prints the number of active features, the graph's
size, the time of `attribute` (first call, compiling included, and a second call on the same
shapes) and the peak memory: the device's peak bytes where JAX reports them (GPU, TPU), else
the process's peak resident set (CPU).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def one(n_tokens: int, args) -> dict:
    import jax

    import jtlens
    from jtlens.sparse import TranscoderConfig, Transcoders, attribute
    from jtlens.sparse.corpus import corpus_tokens

    model = jtlens.HookedTransformer.from_pretrained("smollm2-135m")
    cfg = model.cfg
    stream = corpus_tokens("docstrings", model.tokenizer, max_tokens=n_tokens)
    tokens = jax.numpy.asarray(stream[:n_tokens])
    tc = Transcoders.init(TranscoderConfig(cfg.n_layers, cfg.d_model, args.d_transcoder,
                                           activation="topk", k=args.k), jax.random.PRNGKey(0))
    run = lambda: attribute(model.params, cfg, tc, tokens, batch_size=args.batch_size,  # noqa: E731
                            max_feature_nodes=args.max_feature_nodes)
    t = time.perf_counter()
    graph = run()
    first = time.perf_counter() - t
    t = time.perf_counter()
    run()
    second = time.perf_counter() - t
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    where = "device peak"
    if peak is None:
        peak, where = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process peak RSS"
    return {"tokens": n_tokens, "active_features": int(cfg.n_layers * (n_tokens - 1) * args.k),
            "feature_nodes": graph.n_features, "graph_nodes": graph.adjacency.shape[0],
            "first_s": round(first, 2), "second_s": round(second, 2),
            "peak_GiB": round(peak / 2**30, 2), "memory": where, "device": str(jax.devices()[0])}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, nargs="+", default=[16, 128, 1024])
    p.add_argument("--d-transcoder", type=int, default=2304)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--max-feature-nodes", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a single length, in this process
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args)))
        return
    passed = [a for a in sys.argv[1:] if a not in map(str, args.tokens) and a != "--tokens"]
    print("| tokens | active features | feature nodes | graph nodes | first call, s | second call, s "
          "| peak memory, GiB |")
    print("|---|---|---|---|---|---|---|")
    for n in args.tokens:
        out = subprocess.run([sys.executable, "-m", "benchmarks.attribution_graph", "--one", str(n),
                              *passed], cwd=ROOT, capture_output=True, text=True)
        if out.returncode:
            why = (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1]
            print(f"| {n} | failed: {why} |||||")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {n} | {r['active_features']} | {r['feature_nodes']} | {r['graph_nodes']} | "
              f"{r['first_s']} | {r['second_s']} | {r['peak_GiB']} ({r['memory']}, {r['device']}) |")


if __name__ == "__main__":
    main()
