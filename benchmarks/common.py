"""Shared benchmark setup: one random GPT-2-small checkpoint, the same weights in every library.

The checkpoint is a Hugging Face folder (random weights, a stand-in tokenizer) built once and
cached. TransformerLens 3.9 (HookedTransformer) and jtlens load it in this process;
TransformerLens 4.3 (TransformerBridge, compatibility mode) cannot share an environment with
3.9, so it runs in a subprocess (benchmarks/bridge_worker.py) from `.tl43` (`make bench`).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TL43 = ROOT / ".tl43"
GPT2_SMALL = dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, n_positions=1024)


def gpt2_small_dir() -> Path:
    """A cached HF folder with a randomly initialised GPT-2-small (seed 0)."""
    out = Path(os.environ.get("JTLENS_BENCH_CACHE", Path(tempfile.gettempdir()) / "jtlens-bench")) / "gpt2-small-random"
    if (out / "model.safetensors").exists():
        return out
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**GPT2_SMALL))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    cfg = json.loads((out / "config.json").read_text())
    cfg["n_ctx"] = cfg["n_positions"]  # TransformerLens 3.9 reads n_ctx, which transformers 5 dropped
    (out / "config.json").write_text(json.dumps(cfg))
    # Benchmarks feed token ids; the tokenizer only has to exist for the libraries that load one.
    vocab = {f"t{i}": i for i in range(GPT2_SMALL["vocab_size"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="t0", eos_token="t0").save_pretrained(out)
    return out


def tokens(batch: int, pos: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, GPT2_SMALL["vocab_size"], (batch, pos))


def tl39_model(folder: Path):
    """TransformerLens 3.9 HookedTransformer from the folder, with its default processing."""
    import torch
    import transformer_lens.loading_from_pretrained as lp
    from transformer_lens import HookedTransformer
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)  # with 2 threads TL 3.9 is ~10x slower on this machine (thread thrash)
    hf = AutoModelForCausalLM.from_pretrained(folder)
    cfg = lp.get_pretrained_model_config(str(folder), fold_ln=True, device="cpu", dtype=torch.float32)
    sd = lp.get_pretrained_state_dict(str(folder), cfg, hf_model=hf, dtype=torch.float32)
    model = HookedTransformer(cfg, move_to_device=False)
    model.load_and_process_state_dict(sd, fold_ln=True, center_writing_weights=True,
                                      center_unembed=True, fold_value_biases=True)
    return model.eval()


def arguments(doc: str, repeats: int = 5):
    """The options of a side-by-side benchmark: --repeats and --no-bridge."""
    import argparse

    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--repeats", type=int, default=repeats)
    ap.add_argument("--no-bridge", action="store_true", help="skip TransformerLens 4.3")
    return ap.parse_args()


def gpt2_small_models():
    """(folder, TransformerLens 3.9 model, jtlens model) on the shared random GPT-2-small."""
    folder = gpt2_small_dir()
    tl = tl39_model(folder)
    return folder, tl, jtlens_from_tl(tl)


def jtlens_from_tl(tl_model):
    """A jtlens HookedTransformer holding exactly the TransformerLens model's (processed) weights."""
    import jtlens
    from jtlens.io.conversions.transformer_lens import config_from_tl, params_from_state_dict

    cfg = config_from_tl(tl_model.cfg)
    return jtlens.HookedTransformer(cfg, params_from_state_dict(tl_model.state_dict(), cfg))


def timed(fn, repeats: int = 5):
    """(first-call seconds, median seconds of `repeats` further calls)."""
    t = time.perf_counter()
    fn()
    first = time.perf_counter() - t
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return first, statistics.median(runs)


def bridge(task: str, **args) -> dict | None:
    """Run a task on TransformerLens 4.3's TransformerBridge in a subprocess (on the random
    GPT-2-small unless `folder=` names another checkpoint); None if not installed."""
    if not (TL43 / "transformer_lens").exists():
        print("  (TransformerLens 4.3 not in .tl43 — `make bench` installs it; skipping the bridge)")
        return None
    env = dict(os.environ, PYTHONPATH=f"{TL43}{os.pathsep}{ROOT}")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.npz"
        cmd = [sys.executable, str(ROOT / "benchmarks" / "bridge_worker.py"), task,
               json.dumps(dict({"folder": str(gpt2_small_dir())}, **args, out=str(out)))]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"  bridge worker failed:\n{proc.stderr[-2000:]}")
            return None
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        if out.exists():
            result["arrays"] = dict(np.load(out))
        return result


def row(label: str, ref_s: float, ours_s: float, extra: str = "") -> str:
    return f"{label:<44} {ref_s * 1e3:>10.1f} ms {ours_s * 1e3:>10.1f} ms {ref_s / ours_s:>8.2f}x {extra}"
