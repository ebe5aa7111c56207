"""Saving and loading jtlens checkpoints under bad inputs and crashes: a one-line error naming
the file and the problem, or the correct result. Case ids start with their outcome class."""

import json
import shutil
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

import jtlens
from jtlens import checkpoint_io
from jtlens.checkpoint_io import MANIFEST, IncompleteCheckpoint
from jtlens.loading import NATIVE_CONFIG, NATIVE_PARAMS, load, save_converted


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny):
    """A folder saved by save_converted (no processing applied, so loads are bit-exact)."""
    cfg, params, _ = tiny
    folder = tmp_path_factory.mktemp("saved") / "model"
    save_converted(folder, cfg, params)
    return folder


def _copy(saved, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(saved, dst)
    return dst


def _load(folder):
    return load(folder, fold_ln=False, center_writing_weights=False, center_unembed=False,
                fold_value_biases=False, progress=False)


def _rewrite(folder, name, data: bytes, manifest: bool = True):
    """Replace a file; with manifest=True the manifest is refreshed (a consistent but bad file)."""
    (folder / name).write_bytes(data)
    if manifest:
        checkpoint_io.write_manifest(folder)


# ----------------------------------------------------------------------------- damaged folders
def _drop_manifest(f):
    (f / MANIFEST).unlink()


def _truncate_params(f):
    data = (f / NATIVE_PARAMS).read_bytes()
    (f / NATIVE_PARAMS).write_bytes(data[: len(data) // 3])


def _flip_params_byte(f):
    data = bytearray((f / NATIVE_PARAMS).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (f / NATIVE_PARAMS).write_bytes(bytes(data))


def _drop_params(f):
    (f / NATIVE_PARAMS).unlink()


def _bad_manifest(f):
    (f / MANIFEST).write_text("{not json")


def _config_text(text):
    return lambda f: _rewrite(f, NATIVE_CONFIG, text.encode())


def _config_edit(**changes):
    def edit(f):
        meta = json.loads((f / NATIVE_CONFIG).read_text())
        meta["config"].update(changes)
        _rewrite(f, NATIVE_CONFIG, json.dumps(meta).encode())
    return edit


def _int_params(f):
    from safetensors.numpy import load, save

    flat = load((f / NATIVE_PARAMS).read_bytes())
    flat["embed.W_E"] = np.arange(flat["embed.W_E"].size, dtype=np.int32).reshape(flat["embed.W_E"].shape)
    _rewrite(f, NATIVE_PARAMS, save(flat))


def _garbage_params(f):
    _rewrite(f, NATIVE_PARAMS, b"\xc1" * 64)


DAMAGE = [
    (_drop_manifest, IncompleteCheckpoint, "incomplete checkpoint, jtlens_manifest.json is missing"),
    (_truncate_params, IncompleteCheckpoint, "params.safetensors: \\d+ bytes, the manifest says \\d+; "
                                             "the file is truncated"),
    (_flip_params_byte, IncompleteCheckpoint, "params.safetensors: contents do not match the manifest"),
    (_drop_params, IncompleteCheckpoint, "incomplete checkpoint, params.safetensors is missing"),
    (_bad_manifest, IncompleteCheckpoint, "jtlens_manifest.json: unreadable manifest"),
    (_config_text("{\"config\": "), ValueError, "jtlens_config.json: invalid JSON"),
    (_config_text("[1, 2]"), ValueError, "jtlens_config.json: expected a JSON object, found a list"),
    (_config_text("{}"), ValueError, "jtlens_config.json: no \"config\" object"),
    (lambda f: _rewrite(f, NATIVE_CONFIG, b"\xff\xfe\x00binary"), ValueError,
     "jtlens_config.json: not a text file \\(expected JSON\\)"),
    (_config_edit(n_layer=2), ValueError, "jtlens_config.json: Config: unknown fields \\['n_layer'\\]"),
    (_config_edit(d_head=0), ValueError, "jtlens_config.json: Config: d_head=0 must be positive"),
    (_config_edit(n_layers="2"), ValueError, "jtlens_config.json: Config: n_layers='2' must be an integer"),
    (_config_edit(d_model=24, d_head=8, n_heads=3), ValueError,
     "param .*: converted tensor has shape .* the config expects"),
    (_int_params, ValueError, "param embed.W_E holds int32 values; a weight must be floating point"),
    (_garbage_params, ValueError, "params.safetensors: unreadable params"),
]


@pytest.mark.parametrize("damage, exc, message", DAMAGE,
                         ids=[f"error-damage-{i}" for i in range(len(DAMAGE))])
@pytest.mark.slow
def test_damaged_checkpoint_is_named(saved, tmp_path, damage, exc, message, one_line_error):
    folder = _copy(saved, tmp_path)
    damage(folder)
    with pytest.raises(exc) as e:
        _load(folder)
    one_line_error(e, message)


def test_a_saved_model_round_trips(saved, tiny):  # correct
    cfg, params, _ = tiny
    cfg2, params2, _ = _load(saved)
    assert cfg2 == cfg
    jax.tree_util.tree_map(np.testing.assert_array_equal, params2, params)


def test_an_extra_file_beside_a_checkpoint_is_fine(saved, tmp_path):  # correct
    folder = _copy(saved, tmp_path)
    (folder / "notes.txt").write_text("mine")
    assert _load(folder)[0].n_layers == 2


# ----------------------------------------------------------------------------- destinations
def test_non_empty_destination_is_refused(tmp_path, tiny, one_line_error):  # error
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError) as e:
        save_converted(tmp_path / "out", tiny[0], tiny[1])
    one_line_error(e, "out is not empty; choose a new folder or pass overwrite=True")
    assert (tmp_path / "out" / "keep.txt").read_text() == "precious"


def test_file_destination_is_refused(tmp_path, tiny, one_line_error):  # error
    (tmp_path / "out").write_text("a file")
    with pytest.raises(FileExistsError) as e:
        save_converted(tmp_path / "out", tiny[0], tiny[1], overwrite=True)
    one_line_error(e, "out is a file; give a folder path")


def test_unwritable_parent_is_named(tmp_path, tiny, one_line_error):  # error (a file as parent: root ignores modes)
    (tmp_path / "plain").write_text("x")
    with pytest.raises(OSError) as e:
        save_converted(tmp_path / "plain" / "out", tiny[0], tiny[1])
    one_line_error(e, "cannot write in .*plain")


def test_empty_existing_folder_is_used(tmp_path, tiny):  # correct
    (tmp_path / "out").mkdir()
    save_converted(tmp_path / "out", tiny[0], tiny[1])
    assert _load(tmp_path / "out")[0] == tiny[0]


@pytest.mark.parametrize("exchange", [True, False], ids=["correct-renameat2", "correct-fallback"])
def test_overwrite_replaces_the_whole_folder(tmp_path, tiny, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(checkpoint_io, "_exchange", lambda a, b: False)
    cfg, params, _ = tiny
    out = tmp_path / "out"
    save_converted(out, cfg, params)
    (out / "stale.txt").write_text("from before")
    other = jtlens.init_params(cfg, jax.random.PRNGKey(7))
    save_converted(out, cfg, other, overwrite=True)
    assert not (out / "stale.txt").exists()  # replaced, not mixed
    jax.tree_util.tree_map(np.testing.assert_array_equal, _load(out)[1], other)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left behind


def test_a_failure_mid_save_leaves_the_old_checkpoint(tmp_path, tiny):  # correct
    cfg, params, _ = tiny
    out = tmp_path / "out"
    save_converted(out, cfg, params)

    class Broken:
        def save_pretrained(self, folder):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_converted(out, cfg, jtlens.init_params(cfg, jax.random.PRNGKey(3)), Broken(),
                       overwrite=True)
    jax.tree_util.tree_map(np.testing.assert_array_equal, _load(out)[1], params)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


CHILD = textwrap.dedent("""
    import sys, time, jax, jtlens
    from jtlens.loading import save_converted

    class SlowTokenizer:  # the last file of a save takes a while: a window to kill in
        def save_pretrained(self, folder):
            print("writing", flush=True)
            time.sleep(0.3)

    cfg = jtlens.Config(n_layers=4, d_model=512, n_heads=8, d_head=64, d_vocab=8192, n_ctx=64)
    out = sys.argv[1]
    both = [jtlens.init_params(cfg, jax.random.PRNGKey(k)) for k in (0, 1)]
    for i in range(1000):
        save_converted(out, cfg, both[i % 2], SlowTokenizer(), overwrite=True)
        print("saved", flush=True)
""")


@pytest.mark.slow
def test_kill_9_during_saves_leaves_a_loadable_checkpoint(tmp_path):  # correct
    """A child saves (about 90 MB each time) over and over, alternating two param sets, and is
    killed with SIGKILL: once while it writes the files of a save (params and config already
    written), then at moments spread over the save loop. The folder always loads as one of
    the two, and the temporary folder the first kill leaves shows it interrupted a write."""
    out = tmp_path / "model"
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    cfg = jtlens.Config(n_layers=4, d_model=512, n_heads=8, d_head=64, d_vocab=8192, n_ctx=64)
    want = [jtlens.init_params(cfg, jax.random.PRNGKey(k))["embed"]["W_E"][:2, :4] for k in (0, 1)]
    for when in ("mid-write", 0.1, 0.6):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(out)], env=env,
                                 stdout=subprocess.PIPE, text=True)
        lines = iter(child.stdout.readline, "")
        assert "saved" in (next(lines).strip(), next(lines).strip())  # one whole save first
        if when == "mid-write":
            assert next(lines).strip() == "writing"
        else:
            time.sleep(when)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        got_cfg, params, _ = _load(out)
        assert got_cfg == cfg
        head = np.asarray(params["embed"]["W_E"][:2, :4])
        assert any(np.array_equal(head, w) for w in want)
        leftovers = [p for p in tmp_path.iterdir() if p.name != "model"]
        assert all(p.name.startswith(".model.partial-") for p in leftovers), leftovers
        if when == "mid-write":
            assert leftovers, "the kill did not interrupt a write"
        for p in leftovers:
            shutil.rmtree(p)


# ----------------------------------------------------------------------------- options
def test_n_ctx_beyond_learned_positions_is_refused(saved, one_line_error):  # error
    with pytest.raises(ValueError) as e:
        load(saved, n_ctx=100, progress=False)
    one_line_error(e, "n_ctx=100 is beyond the 12 positions this checkpoint learned .*pass n_ctx <= 12")


@pytest.mark.slow
def test_a_shorter_n_ctx_uses_the_first_positions(saved, tiny):  # correct
    cfg, params, tokens = tiny
    short_cfg, short, _ = load(saved, n_ctx=8, fold_ln=False, center_writing_weights=False,
                               center_unembed=False, fold_value_biases=False, progress=False)
    assert short_cfg.n_ctx == 8 and short["pos_embed"]["W_pos"].shape == (8, 16)
    np.testing.assert_allclose(jtlens.forward(short, tokens, short_cfg),
                               jtlens.forward(params, tokens, cfg), atol=1e-6)


def test_a_shape_changing_override_is_refused(saved, one_line_error):  # error
    with pytest.raises(ValueError) as e:
        load(saved, d_vocab=60, progress=False)
    one_line_error(e, "param embed.W_E: converted tensor has shape \\(50, 16\\), the config expects \\(60, 16\\)")


@pytest.mark.parametrize("name, exc, message", [
    ("/nonexistent/jtlens/model", FileNotFoundError, "no such folder"),
    ("./missing-model-folder", FileNotFoundError, "no such folder"),
], ids=["error-absolute", "error-relative"])
def test_missing_folders(name, exc, message, one_line_error):
    with pytest.raises(exc) as e:
        load(name, progress=False)
    one_line_error(e, message)


def test_a_file_is_not_a_model(saved, one_line_error):  # error
    with pytest.raises(ValueError) as e:
        load(saved / NATIVE_PARAMS, progress=False)
    one_line_error(e, "is a file; pass the folder that holds the checkpoint")


def test_hub_failure_is_one_line_with_a_hint(monkeypatch, one_line_error):  # error
    import huggingface_hub

    def offline(*a, **k):
        raise ConnectionError("Max retries exceeded with url\nCaused by NewConnectionError(...)")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(OSError) as e:
        load("someone/some-model", progress=False)
    one_line_error(e, "could not fetch 'someone/some-model' .*offline.*ConnectionError: Max retries "
                      "exceeded with url$")
    assert str(e.value).count("(") == str(e.value).count(")")


def test_the_shipped_model_has_a_valid_manifest():  # correct
    checkpoint_io.check_manifest(jtlens.loading.ALIASES["jtlens-tiny"])


def test_folders_saved_with_msgpack_params_still_load(saved, tmp_path):
    """Folders written before params moved to safetensors hold params.msgpack (flax
    serialization): they load to the same arrays."""
    from flax import serialization
    from safetensors.numpy import load as load_safetensors

    from jtlens.io.native import LEGACY_PARAMS, _unflatten

    legacy = _copy(saved, tmp_path)
    tree = _unflatten(load_safetensors((legacy / NATIVE_PARAMS).read_bytes()))
    (legacy / NATIVE_PARAMS).unlink()
    _rewrite(legacy, LEGACY_PARAMS, serialization.msgpack_serialize(tree))
    _, new_params, _ = load(saved, progress=False, fold_ln=False, center_writing_weights=False,
                            center_unembed=False, fold_value_biases=False)
    _, old_params, _ = load(legacy, progress=False, fold_ln=False, center_writing_weights=False,
                            center_unembed=False, fold_value_biases=False)
    flat_new, flat_old = (jax.tree_util.tree_leaves_with_path(p) for p in (new_params, old_params))
    assert [k for k, _ in flat_new] == [k for k, _ in flat_old]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(flat_new, flat_old))
