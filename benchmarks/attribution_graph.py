"""Attribution graphs on SmolLM2-135M with random TopK transcoders: time and peak memory by
prompt length, jtlens and circuit-tracer 0.5.0.

    python -m benchmarks.attribution_graph [--tokens 16 128 1024] [--d-transcoder 2304] [--k 8]
        [--max-feature-nodes 256] [--batch-size 16] [--ct-threads 1] [--no-ct]

Each length runs in its own process per library (so the peak memory is that run's): SmolLM2 is
the Hugging Face folder of its GGUF's dequantised weights (tests/oracle.py: smollm2_hf), the
transcoders are random TopK (k active features per layer and position, 30 layers) written once
in circuit-tracer's format and read by both, the prompt is the first N tokens of the
CPython-docstrings corpus (a BOS first). It prints the number of active features, the graph's
size, the time of `attribute` (first call, compiling included, and a second call on the same
shapes) and the peak memory: the device's peak bytes where JAX reports them (GPU, TPU), else
the process's peak resident set (CPU), which includes loading the model; in brackets, what the
second call added to the resident set at its highest (benchmarks/rss.py), the graph's own
memory. circuit-tracer (from `.ct`, `make test` installs it;
benchmarks/circuit_tracer_worker.py) runs on the same folder, transcoders and tokens with the
same batch size and feature budget; the ratio is jtlens's second call over circuit-tracer's, and
the largest difference between the two graphs' edges (feature and logit rows) shows they
computed the same one.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.rss import RSSPeak  # noqa: E402


CACHE = Path(tempfile.gettempdir()) / "jtlens-bench"


def model_folder() -> Path:
    from benchmarks.first_contact import hf_folder

    return hf_folder(CACHE)


def transcoder_folder(args, model: Path) -> Path:
    """Random TopK transcoders for SmolLM2 in circuit-tracer's format (seed 0, written once)."""
    folder = CACHE / f"smollm2-topk-transcoders-{args.d_transcoder}-k{args.k}"
    if not (folder / "config.yaml").exists():
        import jax

        from jtlens.sparse import TranscoderConfig, Transcoders
        from jtlens.experiments.sparse.transcoder_formats import write_circuit_tracer

        cfg = json.loads((model / "config.json").read_text())
        tc = Transcoders.init(TranscoderConfig(cfg["num_hidden_layers"], cfg["hidden_size"],
                                               args.d_transcoder, activation="topk", k=args.k),
                              jax.random.PRNGKey(0))
        write_circuit_tracer(tc, folder)
    return folder


def prompt(n_tokens: int, tokenizer) -> np.ndarray:
    from jtlens.sparse.corpus import corpus_tokens

    return corpus_tokens("docstrings", tokenizer, max_tokens=n_tokens)[:n_tokens]


def one(n_tokens: int, args) -> dict:
    import jax

    import jtlens
    from jtlens.sparse import attribute
    from jtlens.experiments.sparse.transcoder_formats import read_circuit_tracer

    model = jtlens.HookedTransformer.from_pretrained(args.model, progress=False)
    cfg = model.cfg
    tokens = jax.numpy.asarray(prompt(n_tokens, model.tokenizer))
    tc = read_circuit_tracer(args.transcoders)
    run = lambda: attribute(model.params, cfg, tc, tokens, batch_size=args.batch_size,  # noqa: E731
                            max_feature_nodes=args.max_feature_nodes)
    t = time.perf_counter()
    graph = run()
    first = time.perf_counter() - t
    t = time.perf_counter()
    with RSSPeak() as rss:
        run()
    second = time.perf_counter() - t
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    where = "device peak"
    if peak is None:
        peak, where = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process peak RSS"
    np.savez(args.save, edges=graph.edges, feature_index=graph.active_features,
             tokens=graph.tokens)
    return {"tokens": n_tokens, "active_features": int(cfg.n_layers * (n_tokens - 1) * args.k),
            "feature_nodes": graph.n_features, "graph_nodes": graph.adjacency.shape[0],
            "first_s": round(first, 2), "second_s": round(second, 2),
            "peak_GiB": round(peak / 2**30, 2), "memory": where, "device": str(jax.devices()[0]),
            "added_GiB": round(rss.added, 2)}


def circuit_tracer(n_tokens: int, args, ours: Optional[dict]) -> str:
    """circuit-tracer's cells of the row: time, peak RSS, ratio, largest adjacency difference."""
    from transformers import AutoTokenizer

    from benchmarks import circuit_tracer_worker

    tokens = prompt(n_tokens, AutoTokenizer.from_pretrained(args.model))
    try:
        r = circuit_tracer_worker.run(Path(args.model), Path(args.transcoders), tokens,
                                      batch_size=args.batch_size, repeat=2, threads=args.ct_threads,
                                      dense=False,
                                      max_feature_nodes=args.max_feature_nodes)
    except RuntimeError as e:
        return f"failed: {' '.join(str(e).split())[-200:]} |||"
    if r is None:
        return "not installed (`make test` puts it in .ct) |||"
    if os.environ.get("JTLENS_BENCH_KEEP"):  # both graphs, to look into a difference
        np.savez(Path(os.environ["JTLENS_BENCH_KEEP"]) / f"graphs-{n_tokens}.npz",
                 **{f"ct_{k}": v for k, v in r.items() if isinstance(v, np.ndarray)},
                 **{f"jt_{k}": v for k, v in (ours or {}).items() if isinstance(v, np.ndarray)})
    same = "different nodes"
    if ours is not None and np.array_equal(ours["feature_index"], r["active_features"]):
        same = f"{np.abs(ours['edges'] - r['edges']).max():.1e}"
    ratio = f"{ours['second_s'] / r['second_s']:.2f}" if ours is not None else ""
    return (f"{r['first_s']:.2f} / {r['second_s']:.2f} | {r['peak_GiB']:.2f} "
            f"(+{r['added_GiB']:.2f}) | {ratio} | {same}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, nargs="+", default=[16, 128, 1024])
    p.add_argument("--d-transcoder", type=int, default=2304)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--max-feature-nodes", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16,
                   help="rows per vmapped VJP, both libraries (memory grows with it)")
    p.add_argument("--ct-threads", type=int, default=1,
                   help="torch threads for circuit-tracer (1: at 128 tokens it took 31 s, 63 s with 2)")
    p.add_argument("--no-ct", action="store_true", help="skip circuit-tracer")
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a single length, in this process
    p.add_argument("--save", help=argparse.SUPPRESS)          # where --one leaves its graph
    p.add_argument("--model", help=argparse.SUPPRESS)         # --one: the folders main built
    p.add_argument("--transcoders", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args)))
        return
    # Built once here: the timed processes get their paths (building them needs torch, whose
    # import and model would count in the measured process's memory).
    model = model_folder()
    args.model, args.transcoders = str(model), str(transcoder_folder(args, model))
    passed = [a for a in sys.argv[1:] if a not in map(str, args.tokens) and a != "--tokens"]
    print("| tokens | active features | feature nodes | graph nodes | jtlens first / second call, s "
          "| jtlens peak memory (+ added by the second call), GiB | circuit-tracer first / second "
          "call, s | circuit-tracer peak RSS (+ added by the second call), GiB | jtlens / circuit-tracer (second calls) | max adjacency difference |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in args.tokens:
        with tempfile.TemporaryDirectory() as tmp:
            save = str(Path(tmp) / "graph.npz")
            out = subprocess.run([sys.executable, "-m", "benchmarks.attribution_graph", "--one",
                                  str(n), "--save", save, "--model", args.model,
                                  "--transcoders", args.transcoders, *passed], cwd=ROOT, capture_output=True,
                                 text=True)
            ours = None
            if out.returncode:
                why = (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1]
                cells = f"failed: {why} ||||"
            else:
                ours = json.loads(out.stdout.strip().splitlines()[-1])
                ours.update(np.load(save))
                cells = (f"{ours['active_features']} | {ours['feature_nodes']} | "
                         f"{ours['graph_nodes']} | {ours['first_s']} / {ours['second_s']} | "
                         f"{ours['peak_GiB']} (+{ours['added_GiB']}; {ours['memory']}, "
                         f"{ours['device']})")
            theirs = "skipped ||||" if args.no_ct else circuit_tracer(n, args, ours)
            print(f"| {n} | {cells} | {theirs} |", flush=True)


if __name__ == "__main__":
    main()
