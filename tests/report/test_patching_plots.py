"""Sweep results drawn as labelled PNG and HTML heatmaps."""

import jax
import numpy as np
import pytest

import jtlens
import jtlens.patching as jp
from jtlens.patching.plots import axis_labels, save_heatmap

CFG = jtlens.Config(n_layers=2, d_model=32, n_ctx=16, d_head=8, n_heads=4, d_vocab=50, act_fn="gelu_new")


def _word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(50)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="w0", eos_token="w0")


@pytest.mark.slow
def test_heatmaps_are_written_with_token_labels(tmp_path):
    model = jtlens.HookedTransformer(CFG, jtlens.init_params(CFG, jax.random.PRNGKey(0)), _word_tokenizer())
    rng = np.random.default_rng(0)
    clean, corrupted = rng.integers(1, 50, (2, 5)), rng.integers(1, 50, (2, 5))
    _, cache = model.run_with_cache(clean)
    metric = lambda l: (l[:, -1, 3] - l[:, -1, 7]).mean()  # noqa: E731
    resid = jp.get_act_patch_resid_pre(model, corrupted, cache, metric, progress=False)
    labels = axis_labels(model, corrupted, ("layer", "pos"))
    assert labels[0] == ["L0", "L1"] and labels[1][2] == f"w{corrupted[0, 2]} (2)"
    png = save_heatmap(resid, tmp_path / "resid.png", labels, title="resid_pre")
    html = save_heatmap(resid, tmp_path / "resid.html", labels).read_text()
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 5000
    assert html.count("<td") == resid.size and labels[1][2] in html and "rgb(" in html
    every = jp.get_act_patch_attn_head_all_pos_every(model, corrupted, cache, metric, progress=False)
    heads = save_heatmap(every, tmp_path / "heads.png", axis_labels(model, corrupted, ("layer", "head")),
                         axis_names=("layer", "head"))
    assert heads.stat().st_size > png.stat().st_size
    assert save_heatmap(every, tmp_path / "heads.html").read_text().count("<h3>") == 5


def test_heatmap_bad_input(tmp_path):
    with pytest.raises(ValueError, match="index it down"):
        save_heatmap(np.zeros((2, 3, 4, 5)), tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"\.png or \.html"):
        save_heatmap(np.zeros((2, 3)), tmp_path / "x.jpg")
    with pytest.raises(ValueError, match="labels have"):
        save_heatmap(np.zeros((2, 3)), tmp_path / "x.png", (["a"], ["b"]))
