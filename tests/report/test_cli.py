"""`jtlens run` / `jtlens patch` on the embedded model: outputs, report in a browser, bad input."""

import contextlib
import io
import json
import shutil
import subprocess
import sys
from xml.etree import ElementTree

import numpy as np
import pytest

from jtlens import cli
from jtlens.head_detector import induction_scores, repeated_random_tokens
from jtlens.hooked_transformer import HookedTransformer

pytestmark = pytest.mark.slow  # CLI runs of the embedded model, reports, headless Chromium

TEXT = "The return value is a list. The return value is a"
CORRUPTED = "The return value is a set. The return value is a"
ANSWERS = ["--answer", " list", "--wrong", " set"]
TINY = "jtlens-tiny"  # the fast embedded model; the default (smollm2-135m) is tested in test_gguf


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main(["run", TEXT, "--model", TINY, "--out", str(out), "--save-activations",
                         *ANSWERS, "--corrupted", CORRUPTED]) == 0
    (out / "printed.txt").write_text(printed.getvalue(), encoding="utf-8")
    return out


def test_run_prints_summary_and_writes_report(run_dir, capsys):
    assert cli.main(["run", TEXT, "--model", TINY, "--out", str(run_dir / "again")]) == 0
    printed = capsys.readouterr().out
    for part in ("Next token after the text", "Logit lens", "Most-attended token",
                 "Most active MLP neurons", "Direct logit attribution", "Report:",
                 "per head (BOS position left out)", "of the last position's attention"):
        assert part in printed
    assert "The answer" not in printed and "Activation patching" not in printed
    page = (run_dir / "report.html").read_text()
    for part in ("<h2>The answer &#x27; list&#x27;</h2>", "Logit lens of the answer",
                 "Direct logit attribution of &#x27; list&#x27; - &#x27; set&#x27;",
                 "<h2>Activation patching</h2>", "The BOS position is left out",
                 'class="jtl-attn" id="jtlens-attention"'):
        assert part in page, part
    for name in ("answer_lens.svg", "answer_dla.svg", "answer_dla_diff.svg", "dla.svg",
                 "patching/patch_heads.svg", "patching/patch_resid_pre.svg"):
        svg = (run_dir / name).read_text()
        assert svg.startswith("<svg") and svg.count("<rect") >= 2 * 4, name  # a cell per layer x head at least
        ElementTree.fromstring(svg)  # well-formed XML, as a browser needs


def test_answer_views_are_printed(run_dir):
    printed = (run_dir / "printed.txt").read_text(encoding="utf-8")
    assert "The answer ' list' at the last position: logit" in printed
    assert "logit lens of ' list' (probability, rank; 0 = top) and of ' list' - ' set':" in printed
    assert "direct logit attribution of ' list' - ' set':" in printed
    assert "Activation patching: logit diff ' list' - ' set': clean" in printed
    result = json.loads((run_dir / "patching" / "patching.json").read_text())
    assert result["clean_logit_diff"] > result["corrupted_logit_diff"]


def test_long_text_from_a_file_says_what_was_cut_and_skips_rows(tmp_path, capsys):
    path = tmp_path / "long.txt"
    path.write_text("Return a new list. " * 40, encoding="utf-8")
    assert cli.main(["run", "--file", str(path), "--truncate", "--model", TINY, "--out",
                     str(tmp_path / "o")]) == 0
    printed = capsys.readouterr().out
    model = HookedTransformer.from_pretrained(TINY)
    total = len(model.tokenizer(path.read_text())["input_ids"]) + 1
    assert f"The text is {total} tokens; the first 64 (the model's context) were analysed, " \
           f"{total - 64} cut (--truncate)." in printed
    assert "  ... rows 6-57 skipped (52 rows; all in report.html)" in printed
    assert "The text is" in (tmp_path / "o" / "report.html").read_text()


def test_embedded_model_has_induction_heads_and_the_report_shows_them(run_dir):
    """jtlens-tiny was trained until induction heads formed: on random tokens said twice, a
    layer-1 head attends to the token after the earlier copy, and copying lowers the loss."""
    model = HookedTransformer.from_pretrained(TINY)
    scores = np.asarray(induction_scores(model, seq_len=20, n_prompts=8))
    assert scores[1].max() > 0.2 and scores[1].max() > 5 * scores[0].max(), scores
    rep = repeated_random_tokens(model, seq_len=20, n_prompts=8)
    loss = np.asarray(model(rep, return_type="loss", loss_per_token=True))
    first, repeat = loss[:, :20].mean(), loss[:, 21:].mean()   # BOS + 20 + 20 -> 40 losses
    assert repeat < first - 1.0, (first, repeat)
    page = (run_dir / "report.html").read_text()
    layer, head = np.unravel_index(scores.argmax(), scores.shape)
    assert "<h2>Induction heads</h2>" in page and f"L{layer}H{head}" in page
    ElementTree.fromstring((run_dir / "induction.svg").read_text())


def test_saved_activations_are_the_models_hooks(run_dir):
    model = HookedTransformer.from_pretrained(TINY)
    _, cache = model.run_with_cache(TEXT)
    saved = np.load(run_dir / "activations.npz")
    assert set(saved.files) == set(cache.keys())
    np.testing.assert_array_equal(saved["blocks.1.attn.hook_pattern"],
                                  np.asarray(cache["blocks.1.attn.hook_pattern"]))


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed")
def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    # Record each figure's rendered width in the DOM, so the dump shows the pictures laid out.
    page = tmp_path / "page.html"
    page.write_text((run_dir / "report.html").read_text().replace(
        "</body>", "<script>window.addEventListener('load', () => document.body.dataset.widths ="
                   " [...document.querySelectorAll('figure svg')].map(s => "
                   "Math.round(s.getBoundingClientRect().width)).join(','))</script></body>"))
    dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu",
                          "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert "&#x27;The&#x27;" in dom or "'The'" in dom          # the tokens table
    assert 'aria-label="direct logit attribution of \' list\'"' in dom
    assert 'aria-label="head patching"' in dom
    widths = [int(w) for w in dom.split('data-widths="')[1].split('"')[0].split(",")]
    assert len(widths) >= 8 and min(widths) > 100, widths
    assert dom.count("<canvas") == 2 * 4 and 'data-selected="L0H0"' in dom  # the attention viewer


def test_patch_writes_heatmaps_json_and_page(tmp_path, capsys):
    out = tmp_path / "patch"
    assert cli.main(["patch", "--clean", "The list of strings. The list", "--corrupted",
                     "The set of strings. The set", "--answer", " of", "--wrong", " is",
                     "--model", TINY, "--out", str(out)]) == 0
    result = json.loads((out / "patching.json").read_text())
    assert np.asarray(result["resid_pre"]).ndim == 2 and np.asarray(result["attn_head_out"]).ndim == 2
    assert (out / "patch_heads.svg").is_file() and (out / "patch_resid_pre.svg").is_file()
    page = (out / "patching.html").read_text()
    assert "<h2>Activation patching</h2>" in page and page.count("<svg") == 2
    assert "heads whose clean output moves the metric most" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["run", "   "], "the text is empty"),
    (["run", "word " * 400, "--model", TINY], "longer than the context"),
    (["run", "hi", "--model", "no-such-model-xyz"], "cannot load model 'no-such-model-xyz'"),
    (["run", "hi", "--model", "/nonexistent/folder"], "cannot load model"),
    (["patch", "--clean", "a b c", "--corrupted", "a b", "--answer", " c", "--wrong", " d",
      "--model", TINY],
     "same length"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("jtlens: error:") and message in err


def test_console_script_exit_code():
    proc = subprocess.run([sys.executable, "-m", "jtlens.cli", "run", ""], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("jtlens: error: the text is empty")
    assert "Traceback" not in proc.stderr
