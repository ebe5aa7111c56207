"""Attention views: the standalone HTML renders in headless Chromium; the PNG grid is drawn."""

import re
import shutil
import subprocess

import jax
import numpy as np
import pytest

import jtlens
from jtlens.attention_view import attention_html, attention_png, save_attention

TOKENS = ["<bos>", "The", " cat", " sat", " on", " mat"]


def _pattern(n_heads=3, n=len(TOKENS), seed=0):
    x = np.tril(np.random.default_rng(seed).random((n_heads, n, n))) + 1e-3 * np.eye(n)
    return x / x.sum(-1, keepdims=True)


def _chromium():
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed (make test installs Debian's chromium when root)")
    return [exe, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=3000"]


def test_html_is_self_contained():
    page = attention_html(_pattern(), TOKENS, layer=2)
    assert not re.search(r"""(src|href)\s*=\s*["']?https?:""", page)  # nothing fetched
    assert "@import" not in page and "<link" not in page
    assert "L2H2" in page


@pytest.mark.slow
def test_html_renders_tokens_and_cells_in_chromium(tmp_path):
    cmd = _chromium()
    page = tmp_path / "view.html"
    page.write_text(attention_html(_pattern(), TOKENS, layer=0))
    dom = subprocess.run(cmd + ["--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    labels = re.findall(r'<text[^>]*class="token"[^>]*>([^<]*)</text>', dom)
    assert set(TOKENS) <= {t.replace("&lt;", "<").replace("&gt;", ">") for t in labels}
    assert dom.count("<rect") == len(TOKENS) ** 2  # one cell per (dest, src) of the shown head
    shot = tmp_path / "shot.png"
    subprocess.run(cmd + ["--window-size=500,400", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120)
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.std() > 0.02  # not a blank page


def test_png_grid_and_model_convenience(tmp_path):
    path = attention_png(_pattern(5), tmp_path / "grid.png", TOKENS, layer=1)
    import matplotlib.image

    img = matplotlib.image.imread(path)
    assert img.shape[0] > 200 and img[..., :3].std() > 0.02
    cfg = jtlens.Config(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, d_vocab=20,
                        n_ctx=8, act_fn="relu", normalization_type="LN")
    model = jtlens.HookedTransformer(cfg, jtlens.init_params(cfg, jax.random.PRNGKey(0)))
    out = save_attention(model, np.arange(6)[None], layer=1, path=tmp_path / "l1.html")
    assert "L1H1" in out.read_text()


def test_bad_inputs_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"\[n_heads, pos, pos\].*\[0\]"):
        attention_html(_pattern()[None], TOKENS)
    with pytest.raises(ValueError, match="5 token labels for a pattern over 6 positions"):
        attention_html(_pattern(), TOKENS[:5])
    with pytest.raises(ValueError, match=r"\.html or \.png"):
        save_attention(None, None, 0, tmp_path / "x.pdf")
