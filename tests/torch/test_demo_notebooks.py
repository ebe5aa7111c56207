"""TransformerLens's two demos (demos/Main_Demo.ipynb, demos/Exploratory_Analysis_Demo.ipynb,
TransformerLens's GitHub, MIT licence; copied into tests/torch/demos/) run cell by cell on
SmolLM2-135M twice: with TransformerLens 3.9, and with `transformer_lens` replaced by
`jtlens.torch` in the imports. Every tensor or number a cell binds is compared (1e-4 of its
scale), and at least 95% of the cells must run on jtlens.

The demos are written for TransformerLens 4 and GPT-2 on a notebook with the network. The
changes below are made to the cell text identically on both sides (SUBSTITUTIONS), or the cell is
left out (DROPPED); each says why. Nothing else changes.
"""

import contextlib
import gc
import io
import json
import re
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformer_lens")
pytest.importorskip("plotly")
pytest.importorskip("fancy_einsum")
pytestmark = [pytest.mark.slow, pytest.mark.xla_optimized]  # the real model, compiled as users do

from tests.oracle import tl_from_folder  # noqa: E402

DEMOS = Path(__file__).parent / "demos"
ANY = None  # a substitution for every cell

_LOAD = "model = load_model(device=device)"
_TIME = ("the suite's time budget: TransformerLens 3.9 takes 1.5-3.5 s per SmolLM2 run on 8 "
         "prompts here, and the loops make hundreds")
# (notebook, cell index or ANY, old text, new text, why): applied to both sides.
SUBSTITUTIONS = [
    ("Main_Demo", ANY, "transformer_lens.utilities", "transformer_lens.utils",
     "TransformerLens 4's name for the utils module"),
    ("Exploratory_Analysis_Demo", ANY, "transformer_lens.utilities", "transformer_lens.utils",
     "TransformerLens 4's name for the utils module"),
    ("Main_Demo", 4, "from transformer_lens.model_bridge import TransformerBridge", "",
     "TransformerLens 4 only (TransformerBridge)"),
    ("Exploratory_Analysis_Demo", 1, "from transformer_lens.model_bridge import TransformerBridge", "",
     "TransformerLens 4 only (TransformerBridge)"),
    ("Main_Demo", 8, re.compile(r"model = TransformerBridge.*", re.S), _LOAD,
     "GPT-2 from the hub -> SmolLM2-135M offline, loaded with HookedTransformer's default "
     "processing (TransformerLens 4's TransformerBridge + compatibility mode)"),
    ("Main_Demo", 21, re.compile(r"distilgpt2 = .*", re.S), "distilgpt2 = load_model(device=device)",
     "distilgpt2 from the hub -> the same SmolLM2-135M"),
    ("Exploratory_Analysis_Demo", 4, re.compile(r"model = TransformerBridge.*?\n\)\n", re.S),
     "model = load_model(device=None)\n",
     "GPT-2 from the hub -> SmolLM2-135M offline, with HookedTransformer's default processing "
     "(without refactor_factored_attn_matrices, which changes no activation the demo compares)"),
    ("Main_Demo", 23, "tl_named_parameters", "named_parameters", "TransformerLens 4's name"),
    ("Main_Demo", 24, "tl_named_parameters", "named_parameters", "TransformerLens 4's name"),
    ("Main_Demo", 14, "head_index_to_ablate = 8", "head_index_to_ablate = 2",
     "SmolLM2's hook_v has 3 (key/value) heads, GPT-2's 12"),
    ("Main_Demo", 16, "tqdm.tqdm(range(model.cfg.n_layers))", "LAYERS", _TIME),
    ("Main_Demo", 16, "range(num_positions)", "POSITIONS", _TIME),
    ("Main_Demo", 16, 'get_act_name("in", layer)', 'get_act_name("resid_pre", layer)',
     "TransformerLens 4's alias \"in\" for resid_pre"),
    ("Main_Demo", 48, "model.embed.W_E @ OV_circuit_all_heads @ model.unembed.W_U",
     "model.embed.W_E[:2048] @ OV_circuit_all_heads @ model.unembed.W_U[:, :2048]",
     "memory: over SmolLM2's 49,152-token vocabulary the factors take 2 x 3.4 GB per side"),
    ("Main_Demo", 52, "max_new_tokens=50", "max_new_tokens=8", _TIME),
    ("Main_Demo", 51, "for layer in range(12) for head in range(12)",
     "for layer in range(model.cfg.n_layers) for head in range(model.cfg.n_heads)",
     "GPT-2's 12 layers and 12 heads written out"),
    ("Main_Demo", 18, "batch_size = 10\nseq_len = 50", "batch_size = 2\nseq_len = 12", _TIME),
    ("Exploratory_Analysis_Demo", 40, "seq_len = 100", "seq_len = 12", _TIME),
    *[("Exploratory_Analysis_Demo", c, "for layer in range(model.cfg.n_layers):", "for layer in LAYERS:",
       _TIME) for c in (20, 22, 25, 27, 30)],
    *[("Exploratory_Analysis_Demo", c, "range(tokens.shape[1])", "POSITIONS", _TIME) for c in (20, 22)],
    *[("Exploratory_Analysis_Demo", c, "for head_index in range(model.cfg.n_heads):",
       "for head_index in HEADS:", _TIME) for c in (25, 27, 30)],
    ("Exploratory_Analysis_Demo", 32, "for A in range(model.cfg.n_heads):", "for A in HEADS:", _TIME),
    ("Exploratory_Analysis_Demo", 32, "for B in range(model.cfg.n_heads):", "for B in HEADS:", _TIME),
]
# Cells left out: (notebook, cell index) -> why.
DROPPED = {
    ("Main_Demo", 0): "Colab detection and IPython magics (%pip, %autoreload); the harness sets "
                      "IN_COLAB = False and IN_GITHUB = True, as TransformerLens's CI runs the demos",
    ("Exploratory_Analysis_Demo", 0): "the same Colab and IPython cell",
    ("Main_Demo", 56): "needs the network: TransformerLens lists the checkpoints of hub models",
}
# What the harness gives both sides: the loops' subsets (_TIME) and the notebook's display names.
# (HEADS index hook_v too, which has SmolLM2's 3 key/value heads.)
LAYERS, POSITIONS, HEADS = (17,), (9,), (2,)


def cells(notebook: str) -> list[str]:
    nb = json.loads((DEMOS / f"{notebook}.ipynb").read_text())
    sources = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    out = []
    for index, source in enumerate(sources):
        for name, cell, old, new, _ in SUBSTITUTIONS:
            if name == notebook and cell in (ANY, index):
                changed = old.sub(new, source) if isinstance(old, re.Pattern) else source.replace(old, new)
                assert changed != source or cell is ANY, f"{notebook} cell {index}: {old!r} not found"
                source = changed
        out.append(None if (notebook, index) in DROPPED else source)
    return out


def for_jtlens(source: str) -> str:
    """The one change on jtlens's side: the import."""
    return re.sub(r"\btransformer_lens\b", "jtlens.torch", source)


@contextlib.contextmanager
def display_stubs():
    """circuitsvis and IPython are not installed (and show nothing here): stand-ins that take
    the same arguments; plotly figures are built but not shown."""
    import plotly.basedatatypes

    html = types.SimpleNamespace(show_code=lambda: "<div/>")
    cv = types.ModuleType("circuitsvis")
    cv.attention = types.ModuleType("circuitsvis.attention")
    cv.attention.attention_heads = cv.attention.attention_pattern = lambda **kw: html
    cv.examples = types.SimpleNamespace(hello=lambda name: html)
    ipython = types.ModuleType("IPython")
    ipython.display = types.ModuleType("IPython.display")
    ipython.display.HTML = ipython.display.IFrame = lambda *a, **k: None
    ipython.get_ipython = lambda: None
    stubs = {"circuitsvis": cv, "circuitsvis.attention": cv.attention, "IPython": ipython,
             "IPython.display": ipython.display}
    saved = {k: sys.modules.get(k) for k in stubs}
    sys.modules.update(stubs)
    show = plotly.basedatatypes.BaseFigure.show
    plotly.basedatatypes.BaseFigure.show = lambda self, *a, **k: None
    try:
        yield
    finally:
        plotly.basedatatypes.BaseFigure.show = show
        for k, v in saved.items():
            sys.modules.pop(k) if v is None else sys.modules.__setitem__(k, v)


def run_notebook(sources: list, load_model) -> list:
    """Run the cells in one namespace; per cell: (error or None, {name: value} it bound)."""
    ns = {"__name__": "__demo__", "IN_COLAB": False, "IN_GITHUB": True, "DEVELOPMENT_MODE": False,
          "display": lambda *a, **k: None, "load_model": load_model, "LAYERS": LAYERS,
          "POSITIONS": POSITIONS, "HEADS": HEADS}
    results = []
    for index, source in enumerate(sources):
        if source is None:
            results.append(("dropped", {}, 0.0))
            continue
        before, start = dict(ns), time.perf_counter()
        versions = {k: v._version for k, v in ns.items() if isinstance(v, torch.Tensor)}
        torch.manual_seed(index)  # the demos draw random tokens: the same on both sides
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                exec(compile(source, f"<cell {index}>", "exec"), ns)
            error = None
        except Exception as err:  # noqa: BLE001 - recorded and reported per cell
            error = f"{type(err).__name__}: {err}"
        bound = {k: v for k, v in ns.items() if k not in before or before[k] is not v
                 or (isinstance(v, torch.Tensor) and v._version != versions[k])}  # (or edited in place)
        results.append((error, {k: snapshot(v) for k, v in bound.items()},
                        time.perf_counter() - start))
    ns.clear()  # the cells' functions refer back to it: a cycle; free its tensors now
    gc.collect()
    return results


def snapshot(value):
    """A comparable copy of a cell's value: float64 arrays for tensors and numbers, else None."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().resolve_conj().numpy().copy()
    if isinstance(value, (float, int, np.ndarray)) and not isinstance(value, bool):
        return np.asarray(value)
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (float, int)) for v in value):
        return np.asarray(value)
    return None


def differs(ours, theirs) -> bool:
    if ours is None or theirs is None:
        return False
    if ours.shape != theirs.shape:
        return True
    if theirs.dtype.kind == "c":  # eigenvalues: LAPACK's and XLA's eig order them differently
        return any(differs(np.sort(f(ours), -1), np.sort(f(theirs), -1))
                   for f in (np.abs, np.real, np.imag))
    if theirs.dtype.kind in "iub":
        return not np.array_equal(ours, theirs)
    scale = max(float(np.abs(theirs).max()), 1.0) if theirs.size else 1.0
    return bool(theirs.size) and float(np.abs(ours - theirs).max()) > 1e-4 * scale


@pytest.fixture(scope="module")
def jtlens_model(tmp_path_factory):
    """jtlens.torch's SmolLM2, converted into a temporary cache."""
    import os

    import jtlens.torch

    old = os.environ.get("JTLENS_CACHE")
    os.environ["JTLENS_CACHE"] = str(tmp_path_factory.mktemp("jtlens_cache"))
    try:
        yield jtlens.torch.HookedTransformer.from_pretrained("smollm2-135m", progress=False)
    finally:
        os.environ.pop("JTLENS_CACHE") if old is None else os.environ.__setitem__("JTLENS_CACHE", old)


@pytest.fixture(scope="module")
def transformer_lens_model(smollm2_hf):
    model, tokenizer, folder = smollm2_hf
    return tl_from_folder(folder, hf_model=model, tokenizer=tokenizer)


def compare(notebook: str, jtlens_model, transformer_lens_model) -> tuple[int, int, list]:
    """Run `notebook` on both sides: (cells run on jtlens, cells kept, values compared, report
    lines)."""
    sources = cells(notebook)

    def fresh(model):
        def load(device=None):
            model.reset_hooks(including_permanent=True)
            model.set_use_attn_result(False)
            return model
        return load

    torch.set_grad_enabled(False)
    try:
        with display_stubs():
            start = time.perf_counter()
            theirs = run_notebook(sources, fresh(transformer_lens_model))
            middle = time.perf_counter()
            ours = run_notebook([s and for_jtlens(s) for s in sources], fresh(jtlens_model))
            seconds = f"TransformerLens {middle - start:.0f} s, jtlens {time.perf_counter() - middle:.0f} s"
    finally:
        torch.set_grad_enabled(True)
    slowest = sorted(range(len(ours)), key=lambda i: -ours[i][2])[:6]
    report = [f"{notebook} ({seconds}); slowest cells (jtlens s, TransformerLens s): " + ", ".join(
        f"{i}: {ours[i][2]:.1f}, {theirs[i][2]:.1f}" for i in slowest)]
    compared = 0
    for index, ((err, ours_vals, _), (tl_err, tl_vals, _)) in enumerate(zip(ours, theirs)):
        if err == "dropped":
            continue
        compared += sum(tl_vals[k] is not None and ours_vals.get(k) is not None for k in tl_vals)
        if tl_err:
            report.append(f"{notebook} cell {index} fails on TransformerLens 3.9: {tl_err}")
        wrong = [k for k in tl_vals if k in ours_vals and differs(ours_vals[k], tl_vals[k])]
        if err or wrong:
            report.append(f"{notebook} cell {index}: {err or ''}"
                          f"{'values differ: ' + str(wrong) if wrong else ''}")
    kept = [r for r in ours if r[0] != "dropped"]
    return sum(r[0] is None for r in kept), len(kept), compared, report


def test_demos_run_with_transformer_lens_numbers(jtlens_model, transformer_lens_model):
    ran, kept, compared, report = 0, 0, 0, []
    for notebook in ("Main_Demo", "Exploratory_Analysis_Demo"):
        r, k, c, lines = compare(notebook, jtlens_model, transformer_lens_model)
        ran, kept, compared, report = ran + r, kept + k, compared + c, report + lines
    print(f"{ran}/{kept} cells run, {compared} values compared\n" + "\n".join(report))
    assert compared >= 100, report
    assert not [r for r in report if "values differ" in r or "TransformerLens 3.9" in r], report
    assert ran >= 0.95 * kept, report
