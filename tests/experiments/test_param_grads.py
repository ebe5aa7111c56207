"""`jax.grad` of the plain forward with respect to params equals TransformerLens's `.grad`
after `loss.backward()`, on the same weights, for every parameter (under jit)."""

import jax
import numpy as np
import pytest

from jtlens.conversions.transformer_lens import params_from_state_dict
from tests.oracle import CONFIGS, max_diff, tl_model, to_jtlens, tokens_for, torch

import jtlens


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gpt2", "llama", "neox"])
def test_loss_gradients_equal_transformer_lens_backward(name):
    tl = tl_model(CONFIGS[name])
    cfg, params = to_jtlens(tl)
    tokens = tokens_for(cfg, batch=2, pos=8)
    tl.zero_grad()
    tl(torch.tensor(np.array(tokens)), return_type="loss").backward()
    # The state-dict -> params conversion only stacks and reshapes, so it maps TL's gradients
    # onto the params layout as it maps the weights.
    theirs = params_from_state_dict({k: p.grad for k, p in tl.named_parameters()}, cfg)
    loss = lambda p: jtlens.forward(p, tokens, cfg, return_type="loss")  # noqa: E731
    ours = jax.jit(jax.grad(loss))(params)
    flat_ours = jax.tree_util.tree_flatten_with_path(ours)[0]
    flat_theirs = jax.tree_util.tree_leaves(theirs)
    assert len(flat_ours) == len(flat_theirs) > 10
    for (path, g), ref in zip(flat_ours, flat_theirs):
        assert np.abs(ref).max() > 0, jax.tree_util.keystr(path)  # every weight is exercised
        assert max_diff(g, ref) <= 1e-5 * max(1.0, float(np.abs(ref).max())), jax.tree_util.keystr(path)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["v1_0", "v1_1"])
def test_t5_gradients_equal_hugging_face_backward(variant, tmp_path):
    """An encoder-decoder (T5): `jax.grad` of a cross-entropy on the decoder's logits equals
    Hugging Face's `.grad`, mapped onto the params by the checkpoint conversion itself (which
    only transposes and reshapes). T5 has no biases (the conversion's zeros are left out) and
    ties one table as embedding and unembedding: its gradient is the sum of both uses."""
    from jtlens.core.encoder_decoder import encoder_decoder_forward
    from jtlens.io.conversions import t5 as t5_conversion
    from jtlens.io.conversions.common import TensorReader
    from tests.oracle import t5_hf

    hf = t5_hf(variant)
    hf.save_pretrained(tmp_path)
    model = jtlens.HookedEncoderDecoder.from_pretrained(str(tmp_path))
    cfg = model.cfg
    rng = np.random.default_rng(0)
    tokens, decoder = rng.integers(2, cfg.d_vocab, (2, 7)), rng.integers(2, cfg.d_vocab, (2, 5))
    targets = rng.integers(0, cfg.d_vocab, (2, 5))
    hf.zero_grad()
    logits = hf(input_ids=torch.tensor(tokens), decoder_input_ids=torch.tensor(decoder)).logits
    logits.log_softmax(-1).gather(-1, torch.tensor(targets)[..., None]).mean().neg().backward()
    reader = TensorReader({k: p.grad.numpy() for k, p in hf.named_parameters()}, "grads")
    theirs = t5_conversion.params_from_hf(reader, cfg)
    reader.finish()

    def loss(p):
        out = jax.nn.log_softmax(encoder_decoder_forward(p, tokens, decoder, cfg), -1)
        return -jax.numpy.take_along_axis(out, targets[..., None], -1).mean()

    ours = jax.jit(jax.grad(loss))(model.params)
    # the one Hugging Face table, used twice (the conversion read its gradient as both)
    tied = ours["embed"]["W_E"] + ours["unembed"]["W_U"].T
    assert max_diff(tied, theirs["embed"]["W_E"]) <= 1e-5 * float(np.abs(theirs["embed"]["W_E"]).max())
    compared = 0
    for (path, g), ref in zip(jax.tree_util.tree_flatten_with_path(ours)[0], jax.tree_util.tree_leaves(theirs)):
        name = jax.tree_util.keystr(path)
        if "'b_" in name or "embed" in name:  # no T5 biases; the tied table above
            continue
        assert np.abs(ref).max() > 0, name  # every weight is exercised
        assert max_diff(g, ref) <= 1e-5 * max(1.0, float(np.abs(ref).max())), name
        compared += 1
    # decoder: position table, self- and cross-attention W_QKVO, MLP, ln1-3, final norm; encoder:
    # the same without cross-attention and ln3 (W_gate in both when gated)
    assert compared == 15 + 10 + (2 if cfg.gated_mlp else 0)
