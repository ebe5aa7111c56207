"""The SAE pytree against the real sae-lens 6.54.12: encode / decode / forward for every
architecture and input normalisation, and files written by each side read by the other."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
sae_lens = pytest.importorskip("sae_lens")

from jtlens.sparse import SAE, SAEConfig, batchtopk_to_jumprelu  # noqa: E402
from jtlens.sparse.formats import config_from_dict  # noqa: E402

D_IN, D_SAE = 24, 96
CASES = {
    "standard": dict(architecture="standard"),
    "standard_no_bdec": dict(architecture="standard", apply_b_dec_to_input=False),
    "topk": dict(architecture="topk", k=7),
    "topk_rescaled": dict(architecture="topk", k=5, rescale_acts_by_decoder_norm=True),
    "jumprelu": dict(architecture="jumprelu"),
    "gated": dict(architecture="gated"),
    "standard_layer_norm": dict(architecture="standard", normalize_activations="layer_norm"),
    "topk_constant_norm": dict(architecture="topk", k=9, normalize_activations="constant_norm_rescale"),
    "jumprelu_expected_avg": dict(architecture="jumprelu",
                                  normalize_activations="expected_average_only_in"),
    "gated_whitening": dict(architecture="gated", normalize_activations="covariance_whitening"),
}


def _random_weights(cfg: SAEConfig, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = {"W_enc": (cfg.d_in, cfg.d_sae), "W_dec": (cfg.d_sae, cfg.d_in), "b_dec": (cfg.d_in,)}
    names = {"standard": ["W_enc", "b_enc", "W_dec", "b_dec"], "topk": ["W_enc", "b_enc", "W_dec", "b_dec"],
             "jumprelu": ["W_enc", "b_enc", "W_dec", "b_dec", "threshold"],
             "gated": ["W_enc", "b_gate", "r_mag", "b_mag", "W_dec", "b_dec"]}[cfg.architecture]
    out = {n: (rng.standard_normal(shapes.get(n, (cfg.d_sae,))) * 0.3).astype(np.float32) for n in names}
    if "threshold" in out:
        out["threshold"] = np.abs(out["threshold"])
    return out


def _saelens(tmp_path, cfg: SAEConfig, weights: dict):
    """An SAELens SAE with these weights, built the way SAELens loads one from disk."""
    sae = SAE({k: jax.numpy.asarray(v) for k, v in weights.items()}, cfg)
    sae.save_model(tmp_path / "jt")
    return sae, sae_lens.SAE.load_from_disk(str(tmp_path / "jt"))


def _x(shape, seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * 2 + 0.5


@pytest.mark.parametrize("case", sorted(CASES))
def test_encode_decode_forward_match_saelens(tmp_path, case):
    cfg = SAEConfig(D_IN, D_SAE, metadata={"hook_name": "blocks.0.hook_resid_pre"}, **CASES[case])
    ours, theirs = _saelens(tmp_path, cfg, _random_weights(cfg, 0))
    x = _x((3, 5, D_IN))
    with torch.no_grad():
        t_acts = theirs.encode(torch.tensor(x)).numpy()
        t_out = theirs(torch.tensor(x)).numpy()
        t_dec = theirs.decode(torch.tensor(t_acts)).numpy() if cfg.normalize_activations not in (
            "layer_norm", "constant_norm_rescale") else None
    acts, stats = ours.encode_with_stats(x)
    assert (t_acts > 0).sum() > 0 and (t_acts == 0).sum() > 0  # sparse, not degenerate
    np.testing.assert_allclose(np.asarray(acts), t_acts, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(ours(x)), t_out, atol=1e-5, rtol=0)
    if t_dec is not None:
        np.testing.assert_allclose(np.asarray(ours.decode(t_acts)), t_dec, atol=1e-5, rtol=0)
    # jit and the error term: sae(x) gives x back exactly, as SAELens's use_error_term
    with_err = jax.jit(lambda s, x: s.forward(x, use_error_term=True))(ours, x)
    np.testing.assert_allclose(np.asarray(with_err), x, atol=1e-5, rtol=0)


def test_saelens_file_loads_in_jtlens(tmp_path):
    """A folder SAELens itself writes (save_model) loads here with the same activations."""
    cfg_t = sae_lens.JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE)
    theirs = sae_lens.JumpReLUSAE(cfg_t)
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            p.copy_(torch.randn_like(p) * 0.3)
        theirs.threshold.abs_()
    theirs.save_model(str(tmp_path / "t"))
    sparsity = np.linspace(-6, -1, D_SAE).astype(np.float32)
    from safetensors.numpy import save_file
    save_file({"sparsity": sparsity}, str(tmp_path / "t" / "sparsity.safetensors"))
    ours = SAE.load_from_disk(tmp_path / "t")
    x = _x((4, D_IN))
    with torch.no_grad():
        np.testing.assert_allclose(np.asarray(ours.encode(x)), theirs.encode(torch.tensor(x)).numpy(),
                                   atol=1e-5, rtol=0)
        np.testing.assert_allclose(np.asarray(ours(x)), theirs(torch.tensor(x)).numpy(), atol=1e-5, rtol=0)
    from jtlens.sparse.formats import load_sparsity
    np.testing.assert_array_equal(np.asarray(load_sparsity(tmp_path / "t")), sparsity)
    # and our save of it is the same cfg.json SAELens wrote, key for key
    ours.save_model(tmp_path / "again")
    a = json.loads((tmp_path / "t" / "cfg.json").read_text())
    b = json.loads((tmp_path / "again" / "cfg.json").read_text())
    assert a.keys() == b.keys() and a["metadata"].keys() <= b["metadata"].keys()
    assert {k: a[k] for k in a if k != "metadata"} == {k: b[k] for k in b if k != "metadata"}


def test_hook_z_sae_matches_saelens(tmp_path):
    n_heads, d_head = 4, 6
    cfg = SAEConfig(n_heads * d_head, D_SAE, reshape_activations="hook_z",
                    metadata={"hook_name": "blocks.1.attn.hook_z"})
    ours, theirs = _saelens(tmp_path, cfg, _random_weights(cfg, 3))
    z = _x((2, 5, n_heads, d_head))
    with torch.no_grad():
        t_out = theirs(torch.tensor(z)).numpy()
        t_acts = theirs.encode(torch.tensor(z)).numpy()
    assert t_out.shape == z.shape
    np.testing.assert_allclose(np.asarray(ours(z)), t_out, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(ours.encode(z)), t_acts, atol=1e-5, rtol=0)


def test_pre_6_config_reads_as_saelens_reads_it(tmp_path):
    """A pre-6.0 cfg.json (hook_point, activation_fn_kwargs.k, boolean normalisation)."""
    cfg = SAEConfig(D_IN, D_SAE, "topk", k=6)
    w = _random_weights(cfg, 5)
    folder = tmp_path / "old"
    folder.mkdir()
    from safetensors.numpy import save_file
    save_file(w, str(folder / "sae_weights.safetensors"))
    old = {"d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu",
           "model_name": "gpt2", "hook_point": "blocks.2.hook_resid_pre", "hook_point_layer": 2,
           "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 6},
           "normalize_activations": False, "apply_b_dec_to_input": True, "context_size": 128}
    (folder / "cfg.json").write_text(json.dumps(old))
    ours = SAE.load_from_disk(folder)
    theirs = sae_lens.SAE.load_from_disk(str(folder))
    assert ours.cfg.architecture == theirs.cfg.architecture() == "topk"
    assert ours.cfg.k == theirs.cfg.k == 6
    assert ours.cfg.metadata.hook_name == theirs.cfg.metadata.hook_name == "blocks.2.hook_resid_pre"
    assert ours.cfg.normalize_activations == theirs.cfg.normalize_activations == "none"
    x = _x((3, D_IN))
    with torch.no_grad():
        np.testing.assert_allclose(np.asarray(ours(x)), theirs(torch.tensor(x)).numpy(), atol=1e-5, rtol=0)


def test_batchtopk_runs_as_saelens_jumprelu(tmp_path):
    """BatchTopK saves as JumpReLU with one threshold (SAELens's process_state_dict_for_saving)."""
    cfg = SAEConfig(D_IN, D_SAE, "topk", k=8)
    sae = SAE({k: jax.numpy.asarray(v) for k, v in _random_weights(cfg, 7).items()}, cfg)
    jr = batchtopk_to_jumprelu(sae, 0.4)
    jr.save_model(tmp_path / "jr")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "jr"))
    assert theirs.cfg.architecture() == "jumprelu"
    x = _x((5, D_IN))
    with torch.no_grad():
        np.testing.assert_allclose(np.asarray(jr.encode(x)), theirs.encode(torch.tensor(x)).numpy(),
                                   atol=1e-5, rtol=0)


def test_sparsify_layout(tmp_path):
    """sparsify's files: encoder.weight [d_sae, d_in], W_dec [d_sae, d_in]; relu(enc(x - b_dec)),
    top k, decode + b_dec (sparsify's SparseCoder.encode/decode, written out in torch here)."""
    k = 5
    folder = tmp_path / "run" / "layers.3"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(9)
    t = {"encoder.weight": rng.standard_normal((D_SAE, D_IN)).astype(np.float32) * 0.3,
         "encoder.bias": rng.standard_normal(D_SAE).astype(np.float32) * 0.1,
         "W_dec": rng.standard_normal((D_SAE, D_IN)).astype(np.float32) * 0.3,
         "b_dec": rng.standard_normal(D_IN).astype(np.float32) * 0.1}
    from safetensors.numpy import save_file
    save_file(t, str(folder / "sae.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({"expansion_factor": 4, "normalize_decoder": True,
                                                 "num_latents": 0, "k": k, "d_in": D_IN}))
    sae = SAE.load_sparsify(folder)
    assert sae.cfg.metadata.hook_name == "blocks.3.hook_resid_post" and sae.cfg.d_sae == D_SAE
    x = _x((6, D_IN))
    tt = {n: torch.tensor(v) for n, v in t.items()}
    pre = torch.relu((torch.tensor(x) - tt["b_dec"]) @ tt["encoder.weight"].T + tt["encoder.bias"])
    vals, idx = pre.topk(k, sorted=False)
    want = torch.zeros_like(pre).scatter(-1, idx, vals) @ tt["W_dec"] + tt["b_dec"]
    np.testing.assert_allclose(np.asarray(sae(x)), want.numpy(), atol=1e-5, rtol=0)


def test_bad_files_name_the_problem(tmp_path):
    cfg = SAEConfig(D_IN, D_SAE)
    sae = SAE({k: jax.numpy.asarray(v) for k, v in _random_weights(cfg, 0).items()}, cfg)
    sae.save_model(tmp_path / "a")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        sae.save_model(tmp_path / "a")
    c = json.loads((tmp_path / "a" / "cfg.json").read_text())
    c["d_sae"] = D_SAE + 1
    (tmp_path / "a" / "cfg.json").write_text(json.dumps(c))
    with pytest.raises(ValueError, match="W_enc has shape"):
        SAE.load_from_disk(tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="cfg.json"):
        SAE.load_from_disk(tmp_path)
    with pytest.raises(ValueError, match="batchtopk_to_jumprelu"):
        SAEConfig(D_IN, D_SAE, "batchtopk")
    with pytest.raises(ValueError, match="needs the input's stats"):
        SAE(sae.params, cfg.replace(normalize_activations="layer_norm")).decode(np.zeros((1, D_SAE)))


@pytest.mark.parametrize("fn, kwargs", [("tanh-relu", {}), ("topk", {})])
def test_pre_6_activation_other_than_relu_or_topk_is_refused(fn, kwargs):
    """SAELens 6 would run these as plain ReLU; jtlens says so instead of guessing."""
    old = {"d_in": D_IN, "d_sae": D_SAE, "hook_point": "blocks.2.hook_resid_pre",
           "activation_fn_str": fn, "activation_fn_kwargs": kwargs}
    with pytest.raises(ValueError, match="activation_fn="):
        config_from_dict(old)
