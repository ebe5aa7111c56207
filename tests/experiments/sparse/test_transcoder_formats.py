"""Transcoders: circuit-tracer's files written by hand from its documented layout (transposed
W_enc, CLT W_enc_i/W_dec_i), SAELens's per-layer folders against sae-lens 6.54's transcoder
classes, round trips, and the encode/decode formulas in plain numpy."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from safetensors.numpy import save_file

from jtlens.experiments.sparse.transcoder import TranscoderConfig, Transcoders
from jtlens.experiments.sparse.transcoder_formats import (read_circuit_tracer, read_saelens,
                                                          write_circuit_tracer, write_saelens)

L, D, F = 3, 8, 12
rng = np.random.default_rng(0)


def _arr(*shape):
    return rng.standard_normal(shape).astype(np.float32)


@pytest.fixture(scope="module")
def ct_set(tmp_path_factory):
    """A circuit-tracer transcoder_set (JumpReLU, skip) as its own code saves one."""
    folder = tmp_path_factory.mktemp("ct_set")
    layers = []
    for i in range(L):
        t = {"W_enc": _arr(F, D), "W_dec": _arr(F, D), "b_enc": _arr(F), "b_dec": _arr(D),
             "activation_function.threshold": np.abs(_arr(F)) * 0.5, "W_skip": _arr(D, D) * 0.1}
        save_file(t, str(folder / f"layer_{i}.safetensors"))
        layers.append(t)
    (folder / "config.yaml").write_text(yaml.safe_dump(
        {"model_kind": "transcoder_set", "feature_input_hook": "mlp.hook_in",
         "feature_output_hook": "mlp.hook_out", "scan": "test-scan"}))
    return folder, layers


@pytest.fixture(scope="module")
def ct_clt(tmp_path_factory):
    """A circuit-tracer CLT folder: W_enc_i files and W_dec_i [F, L - i, D] files."""
    folder = tmp_path_factory.mktemp("ct_clt")
    enc, dec = [], []
    for i in range(L):
        e = {f"W_enc_{i}": _arr(F, D), f"b_enc_{i}": _arr(F), f"b_dec_{i}": _arr(D)}
        save_file(e, str(folder / f"W_enc_{i}.safetensors"))
        w = _arr(F, L - i, D)
        save_file({f"W_dec_{i}": w}, str(folder / f"W_dec_{i}.safetensors"))
        enc.append(e)
        dec.append(w)
    (folder / "config.yaml").write_text(yaml.safe_dump(
        {"model_kind": "cross_layer_transcoder", "feature_input_hook": "hook_resid_mid",
         "feature_output_hook": "hook_mlp_out"}))
    return folder, enc, dec


def test_circuit_tracer_set_reads_with_their_formulas(ct_set):
    folder, layers = ct_set
    tc = read_circuit_tracer(folder)
    assert tc.cfg.activation == "jumprelu" and tc.cfg.skip and not tc.cfg.cross_layer
    assert (tc.cfg.input_hook, tc.cfg.output_hook, tc.cfg.scan) == (
        "ln2.hook_normalized", "hook_mlp_out", "test-scan")
    x = _arr(L, 5, D)
    expected_acts, expected_out = [], []
    for i, t in enumerate(layers):  # circuit-tracer's SingleLayerTranscoder, in numpy
        pre = x[i] @ t["W_enc"].T + t["b_enc"]
        acts = pre * (pre > t["activation_function.threshold"])
        expected_acts.append(acts)
        expected_out.append(acts @ t["W_dec"] + t["b_dec"] + x[i] @ t["W_skip"].T)
    acts = tc.encode(x)
    np.testing.assert_allclose(acts, np.stack(expected_acts), atol=1e-5)
    np.testing.assert_allclose(tc.decode(acts, x), np.stack(expected_out), atol=1e-4)


def test_circuit_tracer_clt_reads_with_their_formulas(ct_clt):
    folder, enc, dec = ct_clt
    tc = read_circuit_tracer(folder)
    assert tc.cfg.cross_layer and tc.cfg.activation == "relu"
    assert tc.cfg.input_hook == "hook_resid_mid"
    x = _arr(L, 4, D)
    acts = [np.maximum(x[i] @ enc[i][f"W_enc_{i}"].T + enc[i][f"b_enc_{i}"], 0) for i in range(L)]
    out = [enc[t][f"b_dec_{t}"] + sum(acts[s] @ dec[s][:, t - s] for s in range(t + 1))
           for t in range(L)]
    got = tc.encode(x)
    np.testing.assert_allclose(got, np.stack(acts), atol=1e-5)
    np.testing.assert_allclose(tc.decode(got), np.stack(out), atol=1e-4)


@pytest.mark.parametrize("kind", ["set", "clt", "topk"])
def test_circuit_tracer_round_trip(kind, ct_set, ct_clt, tmp_path):
    if kind == "topk":
        tc = Transcoders.init(TranscoderConfig(L, D, F, activation="topk", k=3), _key())
    else:
        tc = read_circuit_tracer((ct_set if kind == "set" else ct_clt)[0])
    back = read_circuit_tracer(write_circuit_tracer(tc, tmp_path / "out"))
    assert back.cfg == tc.cfg
    for name, a in tc.params.items():
        np.testing.assert_array_equal(back.params[name], a)
    if kind == "set":  # the files themselves: circuit-tracer's names and orientation
        from safetensors.numpy import load_file
        mine = load_file(str(tmp_path / "out" / "layer_1.safetensors"))
        theirs = load_file(str(ct_set[0] / "layer_1.safetensors"))
        assert sorted(mine) == sorted(theirs)
        for n in theirs:
            np.testing.assert_array_equal(mine[n], theirs[n])


def _key():
    import jax

    return jax.random.PRNGKey(0)


@pytest.mark.slow
@pytest.mark.parametrize("activation,skip", [("relu", False), ("jumprelu", True)])
def test_saelens_transcoders_match_sae_lens(activation, skip, tmp_path):
    torch = pytest.importorskip("torch")
    sae_lens = pytest.importorskip("sae_lens")
    torch.set_num_threads(1)
    tc = Transcoders.init(TranscoderConfig(L, D, F, activation=activation, skip=skip), _key())
    params = dict(tc.params, b_enc=_arr(L, F), b_dec=_arr(L, D))
    if activation == "jumprelu":
        params["threshold"] = np.abs(_arr(L, F))
    if skip:
        params["W_skip"] = _arr(L, D, D) * 0.1
    tc = Transcoders(params, tc.cfg)
    write_saelens(tc, tmp_path / "sl")
    folders = [tmp_path / "sl" / f"layer_{i}" for i in range(L)]
    back = read_saelens(folders)
    assert back.cfg == tc.cfg
    x = _arr(L, 6, D)
    ours = np.asarray(tc(x))
    for i, folder in enumerate(folders):
        theirs = sae_lens.SAE.load_from_disk(str(folder))
        assert theirs.cfg.architecture() == ("jumprelu_skip_transcoder" if skip else "transcoder")
        assert theirs.cfg.metadata.hook_name == f"blocks.{i}.ln2.hook_normalized"
        with torch.no_grad():
            out = theirs(torch.from_numpy(x[i])).numpy()
        np.testing.assert_allclose(ours[i], out, atol=1e-4)


def test_bad_files_say_what_is_wrong(ct_set, tmp_path, one_line_error):
    with pytest.raises(FileNotFoundError) as e:
        read_circuit_tracer(tmp_path)
    one_line_error(e, "config.yaml")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"model_kind": "sae",
                                                          "feature_input_hook": "a",
                                                          "feature_output_hook": "b"}))
    with pytest.raises(ValueError) as e:
        read_circuit_tracer(tmp_path)
    one_line_error(e, "model_kind='sae'")
    with pytest.raises(ValueError) as e:
        TranscoderConfig(L, D, F, activation="topk")
    one_line_error(e, "integer k")
    tc = read_circuit_tracer(ct_set[0])
    with pytest.raises(ValueError) as e:
        tc.decode(tc.encode(_arr(L, 2, D)))
    one_line_error(e, "skip path")


@pytest.mark.parametrize("kind", ["jumprelu_skip", "clt"])
def test_fold_input_norm_reads_the_normalised_input(kind):
    """Transcoders trained on a norm's output n * w + b (circuit-tracer's mlp.hook_in without
    fold_ln), folded, give the same features and outputs from n alone."""
    import jax

    from jtlens.experiments.sparse.transcoder import fold_input_norm
    from tests.experiments.sparse.transcoder_fixtures import model, transcoders

    cfg, _, _ = model("gpt2")
    tc = transcoders(cfg, kind)
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(5), 3)
    L, d = cfg.n_layers, cfg.d_model
    w = 1 + 0.5 * jax.random.normal(k1, (L, d))
    b = 0.3 * jax.random.normal(k2, (L, d))
    n = jax.random.normal(k3, (L, 6, d))
    seen = n * w[:, None] + b[:, None]
    folded = fold_input_norm(tc, w, b)
    acts = tc.encode(seen)
    assert (acts > 0).mean() > 0.05
    np.testing.assert_allclose(folded.encode(n), acts, atol=1e-5)
    np.testing.assert_allclose(folded.decode(acts, n), tc.decode(acts, seen), atol=1e-5)
    with pytest.raises(ValueError, match=r"\[n_layers, d_in\]"):
        fold_input_norm(tc, w[0])
