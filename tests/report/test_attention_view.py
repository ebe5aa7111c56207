"""Attention views: the interactive HTML renders and responds in headless Chromium; the PNG grid
is drawn."""

import json
import re
import shutil
import subprocess

import jax
import numpy as np
import pytest

import jtlens
from jtlens.attention_view import attention_html, attention_png, attention_viewer, save_attention

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
    assert '"layers": ["L2"]' in page and page.count("<script>") == 1


def _dom(cmd, page, tmp_path, probe: str) -> str:
    """The page's DOM after `probe` (a script run once the page has loaded)."""
    path = tmp_path / "view.html"
    path.write_text(page.replace("</body>", f"<script>{probe}</script></body>"), encoding="utf-8")
    return subprocess.run(cmd + ["--dump-dom", path.as_uri()], capture_output=True, text=True,
                          timeout=120).stdout


@pytest.mark.slow
def test_html_renders_tokens_and_cells_in_chromium(tmp_path):
    cmd = _chromium()
    page = attention_html(_pattern(), TOKENS, layer=0)
    dom = _dom(cmd, page, tmp_path, "")
    labels = re.findall(r'<text[^>]*class="token"[^>]*>([^<]*)</text>', dom)
    assert set(TOKENS) <= {t.replace("&lt;", "<").replace("&gt;", ">") for t in labels}
    n = len(TOKENS)
    assert dom.count("<rect") == n * (n + 1) // 2  # one cell per (dest, src <= dest)
    assert dom.count("<canvas") == 3 and 'data-selected="L0H0"' in dom
    shot = tmp_path / "shot.png"
    subprocess.run(cmd + ["--window-size=900,700", f"--screenshot={shot}",
                          (tmp_path / "view.html").as_uri()], capture_output=True, timeout=120)
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.std() > 0.02  # not a blank page


@pytest.mark.slow
def test_hover_shows_attention_to_and_from_in_chromium(tmp_path):
    """Hovering token 3 colours the first strip by pattern[3, :] and the second by pattern[:, 3];
    a thumbnail click and the arrow keys select heads among 30 layers x 9 heads."""
    cmd = _chromium()
    patterns = np.stack([_pattern(9, seed=s) for s in range(30)])          # [30, 9, 6, 6]
    page = ("<!doctype html><html><head><meta charset='utf-8'></head><body>"
            + attention_viewer(patterns, TOKENS, element_id="v") + "</body></html>")
    probe = """
      const root = document.getElementById("v");
      const alpha = s => {  // rgba(r, g, b, a), or rgb(r, g, b) when a = 1
        const parts = (s.style.background.match(/rgba?\\(([^)]*)\\)/) || [0, ""])[1].split(",");
        return parts.length === 4 ? parseFloat(parts[3]) : parts.length === 3 ? 1 : 0;
      };
      const thumbs = root.querySelectorAll("canvas");
      thumbs[7 * 9 + 4].dispatchEvent(new MouseEvent("click"));            // L7H4
      const views = root.querySelector(".views");
      for (const key of ["ArrowDown", "ArrowDown", "ArrowLeft"])            // -> L9H3
        views.dispatchEvent(new KeyboardEvent("keydown", {key}));
      root.querySelectorAll(".strip.to .tok")[3].dispatchEvent(new MouseEvent("mouseenter"));
      document.body.dataset.to = [...root.querySelectorAll(".strip.to .tok")].map(alpha).join(",");
      document.body.dataset.from = [...root.querySelectorAll(".strip.from .tok")].map(alpha).join(",");
      document.body.dataset.thumbs = thumbs.length;
    """
    dom = _dom(cmd, page, tmp_path, probe)
    assert 'data-selected="L9H3"' in dom and 'data-thumbs="270"' in dom and 'data-hovered="3"' in dom
    read = lambda name: np.array(dom.split(f'data-{name}="')[1].split('"')[0].split(","), float)  # noqa: E731
    shown = np.round(patterns[9, 3], 3)
    # Browsers keep a CSS alpha in 8 bits: within half a step of 1/255.
    np.testing.assert_allclose(read("to"), shown[3], atol=0.5 / 255 + 1e-3)
    np.testing.assert_allclose(read("from"), shown[:, 3], atol=0.5 / 255 + 1e-3)


@pytest.mark.slow
def test_png_grid_and_model_convenience(tmp_path):
    path = attention_png(_pattern(5), tmp_path / "grid.png", TOKENS, layer=1)
    import matplotlib.image

    img = matplotlib.image.imread(path)
    assert img.shape[0] > 200 and img[..., :3].std() > 0.02
    cfg = jtlens.Config(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, d_vocab=20,
                        n_ctx=8, act_fn="relu", normalization_type="LN")
    model = jtlens.HookedTransformer(cfg, jtlens.init_params(cfg, jax.random.PRNGKey(0)))
    out = save_attention(model, np.arange(6)[None], layer=1, path=tmp_path / "l1.html")
    page = out.read_text()
    data = json.loads(page.split("const DATA = ")[1].split(";\n")[0])
    assert data["layers"] == ["L1"] and len(data["patterns"][0]) == 2


def test_bad_inputs_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"\[n_heads, pos, pos\].*\[0\]"):
        attention_html(_pattern()[None], TOKENS)
    with pytest.raises(ValueError, match="5 token labels for a pattern over 6 positions"):
        attention_html(_pattern(), TOKENS[:5])
    with pytest.raises(ValueError, match=r"\[n_layers, n_heads, pos, pos\]"):
        attention_viewer(np.zeros((2, 2, 3, 3, 3)), TOKENS[:3])
    with pytest.raises(ValueError, match="element_id"):
        attention_viewer(_pattern(), TOKENS, element_id="a b")
    with pytest.raises(ValueError, match=r"\.html or \.png"):
        save_attention(None, None, 0, tmp_path / "x.pdf")
