"""`jtlens run --sae FOLDER` on the embedded model: the report's SAE section and dashboards, and
one clear line for a folder that is not an SAE or an SAE that does not fit the model."""

import contextlib
import io
import json

import jax
import pytest

from jtlens import cli
from jtlens.sparse import SAE, SAEConfig
from tests.report.test_bad_inputs_cli import _one_line

TEXT = "Return a new list of the items."
TINY = ["--model", "jtlens-tiny"]  # d_model 128, 2 layers


def _saved(folder, d_in=128, hook="blocks.1.hook_resid_pre"):
    cfg = SAEConfig(d_in=d_in, d_sae=256, architecture="topk", k=8, metadata={"hook_name": hook})
    SAE.init(cfg, jax.random.PRNGKey(0)).save_model(folder)
    return str(folder)


@pytest.mark.slow
def test_run_with_sae_writes_the_section_and_dashboards(tmp_path):
    out = tmp_path / "out"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main(["run", TEXT, *TINY, "--out", str(out), "--sae", _saved(tmp_path / "sae"),
                         "--sae-corpus-windows", "8"]) == 0
    assert "SAE features at blocks.1.hook_resid_pre: most active" in printed.getvalue()
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "<h2>SAE features at blocks.1.hook_resid_pre</h2>" in page
    assert "over 8 windows of the docstrings corpus" in page
    assert "<td>&#x27; list&#x27;</td>" in page  # the per-token table names the text's tokens
    assert page.count("<h3>Feature ") == 3 and "Top-activating contexts" in page
    dashboards = (out / "feature_dashboards.html").read_text(encoding="utf-8")
    assert dashboards.count("<h3>Feature ") == 3 and "<script" not in dashboards


def test_sae_folder_missing(capsys, tmp_path):
    err = _one_line(capsys, 2, ["run", TEXT, *TINY, "--out", str(tmp_path / "o"),
                                "--sae", str(tmp_path / "nope")])
    assert "does not exist" in err and "give an SAELens folder (cfg.json" in err


def test_sae_folder_without_cfg(capsys, tmp_path):
    err = _one_line(capsys, 2, ["run", TEXT, *TINY, "--out", str(tmp_path / "o"),
                                "--sae", str(tmp_path)])
    assert "has no cfg.json" in err and "SAE.save_model" in err


def test_sae_folder_with_broken_weights(capsys, tmp_path):
    folder = _saved(tmp_path / "sae")
    (tmp_path / "sae" / "sae_weights.safetensors").write_bytes(b"not safetensors")
    err = _one_line(capsys, 2, ["run", TEXT, *TINY, "--out", str(tmp_path / "o"), "--sae", folder])
    assert err.startswith(f"jtlens: error: cannot load --sae {folder}: ")


def test_sae_without_hook_name(capsys, tmp_path):
    folder = _saved(tmp_path / "sae")
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    del cfg["metadata"]["hook_name"]
    (tmp_path / "sae" / "cfg.json").write_text(json.dumps(cfg))
    err = _one_line(capsys, 2, ["run", TEXT, *TINY, "--out", str(tmp_path / "o"), "--sae", folder])
    assert "no metadata.hook_name" in err


@pytest.mark.slow  # loads the model
def test_sae_of_another_width(capsys, tmp_path):
    folder = _saved(tmp_path / "sae", d_in=64)
    err = _one_line(capsys, 2, ["run", TEXT, *TINY, "--out", str(tmp_path / "o"), "--sae", folder])
    assert "reads d_in=64 but blocks.1.hook_resid_pre of jtlens-tiny is 128 wide" in err
    assert "use an SAE trained on this model's" in err


@pytest.mark.slow  # loads the model
def test_sae_hook_past_the_model(capsys, tmp_path):
    folder = _saved(tmp_path / "sae", hook="blocks.7.hook_resid_pre")
    err = _one_line(capsys, 2, ["run", TEXT, *TINY, "--out", str(tmp_path / "o"), "--sae", folder])
    assert "blocks.7.hook_resid_pre" in err and "--model the model it was trained on" in err
