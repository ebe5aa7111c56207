"""jtlens's attribution graphs against circuit-tracer 0.5.0 itself (run from `.ct` in a subprocess,
benchmarks/circuit_tracer_worker.py): a tiny random Llama saved as a Hugging Face folder,
random transcoders written by jtlens in circuit-tracer's format, one prompt; the same nodes in
the same order (features (layer, pos, feature), errors, tokens, logits), activations, logit
targets and adjacency to 1e-4. Both sides load the folder with TransformerLens's default
processing (fold_ln), where `ln2.hook_normalized` is the MLP input that circuit-tracer hooks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from benchmarks import circuit_tracer_worker as ct
from jtlens.experiments.sparse.attribution import attribute
from jtlens.experiments.sparse.transcoder_formats import read_circuit_tracer, write_circuit_tracer
from jtlens.io.loading import load
from tests.experiments.sparse.transcoder_fixtures import transcoders
from tests.oracle import tokenizer

pytestmark = pytest.mark.skipif(not ct.available(), reason="circuit-tracer is not installed in "
                                "`.ct` (`make test` installs it; see the Makefile's .ct target)")


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    """(HF folder of a random 2-layer Llama (norm weights randomised), jtlens cfg and params,
    8 prompt tokens starting with the tokenizer's special token)."""
    tok = tokenizer()
    folder = tmp_path_factory.mktemp("ct") / "tiny-random"   # no "llama": TL picks by name
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.3,
        rope_parameters=dict(rope_type="default", rope_theta=500.0)))  # not the default 10000
    with torch.no_grad():  # HF initialises norms to one: randomise them so folding them counts
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    hf.save_pretrained(folder)
    tok.save_pretrained(folder)
    cfg, params, _ = load(str(folder), progress=False)
    rest = np.random.default_rng(0).integers(1, cfg.d_vocab, 7)
    return folder, cfg, params, np.r_[tok.all_special_ids[0], rest]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["jumprelu_skip", "clt"])
def test_same_graph_as_circuit_tracer(fixture, tmp_path, kind):
    folder, cfg, params, tokens = fixture
    tc = read_circuit_tracer(write_circuit_tracer(transcoders(cfg, kind), tmp_path / "tc"))
    ours = attribute(params, cfg, tc, tokens, batch_size=32)
    theirs = ct.run(folder, tmp_path / "tc", tokens, batch_size=32)
    assert np.array_equal(theirs["tokens"], tokens)
    # nodes: the same features in the same (layer, pos, feature) order, then L * pos errors,
    # pos tokens and the same logits; so the adjacency needs no reordering
    np.testing.assert_array_equal(theirs["active_features"], ours.active_features)
    # (activations ~1 from dot products of ~1 terms: the two libraries' rounding is ~2e-6)
    np.testing.assert_allclose(theirs["activation_values"], ours.activation_values, rtol=0,
                               atol=1e-5)
    np.testing.assert_array_equal(theirs["logit_tokens"], ours.logit_tokens)
    np.testing.assert_allclose(theirs["logit_probabilities"], ours.logit_probabilities, atol=1e-6)
    assert ours.n_features > 20 and len(ours.logit_tokens) >= 2
    assert theirs["adjacency"].shape == ours.adjacency.shape
    np.testing.assert_allclose(ours.adjacency, theirs["adjacency"], rtol=0, atol=1e-4)
    assert np.abs(theirs["adjacency"]).max() > 0.1  # edges of a size the tolerance can tell


@pytest.mark.slow
def test_same_graph_with_max_feature_nodes(fixture, tmp_path):
    """Influence-ranked feature selection: the same features kept, the same rows."""
    folder, cfg, params, tokens = fixture
    tc = read_circuit_tracer(write_circuit_tracer(transcoders(cfg, "jumprelu_skip"), tmp_path / "tc"))
    ours = attribute(params, cfg, tc, tokens, batch_size=8, max_feature_nodes=20, update_interval=1)
    theirs = ct.run(folder, tmp_path / "tc", tokens, batch_size=8, max_feature_nodes=20,
                    update_interval=1)
    np.testing.assert_array_equal(theirs["active_features"], ours.active_features)
    np.testing.assert_allclose(ours.adjacency, theirs["adjacency"], rtol=0, atol=1e-4)
