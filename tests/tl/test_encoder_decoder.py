"""T5 (HookedEncoderDecoder) vs Hugging Face and TransformerLens 3.9 on the same weights.

Random tiny T5ForConditionalGeneration checkpoints written by transformers, in both variants:
v1.0 (ReLU MLP, decoder output scaled by d_model**-0.5 before the tied unembed) and v1.1
(gated-GELU MLP, no scaling). TransformerLens's converter reads only v1.0's MLP (`wi`), so its
v1.1 model gets the gate (`wi_0`) and linear half (`wi_1`) by hand.
"""

from __future__ import annotations

import types

import jax
import numpy as np
import pytest

from tests.oracle import T5_SMALL, T5_VARIANTS, assert_caches_match, max_diff, rel_diff, t5_hf, tl_t5

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jtlens  # noqa: E402
from jtlens.conversions.common import ConversionError  # noqa: E402
from jtlens.core.encoder_decoder import encoder_decoder_forward, encoder_decoder_forward_with_cache  # noqa: E402
from jtlens.hooked_encoder_decoder import HookedEncoderDecoder  # noqa: E402

ATOL = 1e-4
VOCAB = T5_SMALL["vocab_size"]
SMALL, VARIANTS = T5_SMALL, T5_VARIANTS


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def t5(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"t5_{request.param}")
    hf = t5_hf(request.param)
    hf.save_pretrained(folder)
    model = HookedEncoderDecoder.from_pretrained(str(folder))
    rng = np.random.default_rng(0)
    tokens, decoder = rng.integers(2, VOCAB, (2, 7)), rng.integers(2, VOCAB, (2, 5))
    mask = np.ones((2, 7), np.int64)
    mask[1, 5:] = 0
    return types.SimpleNamespace(name=request.param, hf=hf, model=model, folder=folder,
                                 tl=tl_t5(hf, model.cfg.scale_decoder_outputs), tokens=tokens,
                                 decoder=decoder, mask=mask)


def t(x):
    return torch.as_tensor(np.asarray(x))


def test_config_follows_the_checkpoint(t5):
    cfg = t5.model.cfg
    assert (cfg.cross_attention, cfg.use_attn_scale, cfg.normalization_type) == (True, False, "RMS")
    assert cfg.scale_decoder_outputs == (t5.name == "v1_0")
    assert (cfg.act_fn, cfg.gated_mlp) == (("relu", False) if t5.name == "v1_0" else ("gelu_new", True))


def test_logits_match_hugging_face_with_padding(t5):
    with torch.no_grad():
        want = t5.hf(input_ids=t(t5.tokens), decoder_input_ids=t(t5.decoder),
                     attention_mask=t(t5.mask)).logits.numpy()
    got = t5.model(t5.tokens, decoder_input=t5.decoder, one_zero_attention_mask=t5.mask)
    assert rel_diff(got, want) <= 1e-5


@pytest.mark.slow
def test_every_hook_matches_transformer_lens(t5):
    """Every TransformerLens hook, same names in the same order (no padding: TransformerLens
    adds finfo.min to padded scores where jtlens writes -inf)."""
    with torch.no_grad():
        tl_logits, tl_cache = t5.tl.run_with_cache(t(t5.tokens), decoder_input=t(t5.decoder))
    logits, cache = t5.model.run_with_cache(t5.tokens, decoder_input=t5.decoder)
    assert list(cache.keys()) == list(tl_cache.keys())
    worst = assert_caches_match(cache, {k: v.numpy() for k, v in tl_cache.items()}, atol=ATOL)
    assert {"decoder.1.cross_attn.hook_pattern", "decoder.0.hook_resid_mid_cross",
            "encoder_final_ln.hook_normalized", "decoder.1.ln3.hook_scale"} <= set(worst)
    assert max_diff(logits, tl_logits.numpy()) <= ATOL
    stacked = cache["encoder.*.attn.hook_pattern"]  # every layer at once
    assert stacked.shape == (2, 2, 4, 7, 7) and max_diff(stacked[1], cache["encoder.1.attn.hook_pattern"]) == 0


@pytest.mark.slow
def test_hooks_as_data_and_functions_match_transformer_lens(t5):
    """A patch, an add and a hook function, one in each stack, against TransformerLens's hooks."""
    def zero_pos_2(act, hook):
        act = act.clone()
        act[:, 2] = 0.0
        return act

    fwd = [("encoder.1.hook_resid_mid", zero_pos_2),
           ("decoder.0.cross_attn.hook_z", lambda act, hook: act * 0.5)]
    with torch.no_grad():
        want = t5.tl.run_with_hooks(t(t5.tokens), decoder_input=t(t5.decoder), fwd_hooks=fwd).numpy()
    where = np.zeros((1, 7, 1), bool)
    where[:, 2] = True
    hooks = jtlens.Hooks(patch={"encoder.1.hook_resid_mid": (0.0, where)},
                         fns={"decoder.0.cross_attn.hook_z": lambda a, hook: a * 0.5})
    got = encoder_decoder_forward(t5.model.params, t5.tokens, t5.decoder, t5.model.cfg, hooks)
    assert max_diff(got, want) <= ATOL
    seen = []
    eager = t5.model.run_with_hooks(
        t5.tokens, decoder_input=t5.decoder,
        fwd_hooks=[("encoder.1.hook_resid_mid", lambda a, hook: a.at[:, 2].set(0.0)),
                   ("decoder.0.cross_attn.hook_z", lambda a, hook: seen.append(hook.name) or a * 0.5)])
    assert max_diff(eager, want) <= ATOL and seen == ["decoder.0.cross_attn.hook_z"]


def test_unknown_hook_name_lists_the_nearest(t5):
    with pytest.raises(ValueError, match="Nearest valid names.*decoder.0.cross_attn.hook_pattern"):
        encoder_decoder_forward(t5.model.params, t5.tokens, t5.decoder, t5.model.cfg,
                                jtlens.Hooks(add={"decoder.0.cross_attn.hook_patern": 0.0}))
    with pytest.raises(ValueError, match="Unknown hook name 'blocks.0.attn.hook_z'"):
        t5.model.run_with_cache(t5.tokens, decoder_input=t5.decoder, names_filter="blocks.0.attn.hook_z")
    with pytest.raises(ValueError, match="encoder_decoder_forward"):
        jtlens.forward(t5.model.params, t5.decoder, t5.model.cfg)
    with pytest.raises(ValueError, match="encoder.* and decoder.* hooks"):
        jtlens.hook_names(t5.model.cfg)
    assert t5.model.hook_names()[:2] == ["hook_embed", "encoder.0.hook_resid_pre"]
    assert "decoder.1.hook_cross_attn_in" in t5.model.hook_names(optional=True)


def test_cache_selection_and_capture(t5):
    _, cache = encoder_decoder_forward_with_cache(
        t5.model.params, t5.tokens, t5.decoder, t5.model.cfg,
        jtlens.Hooks(capture=["decoder.*.hook_resid_mid_cross", "hook_embed", "*final_ln.hook_scale"]))
    assert list(cache.keys()) == ["hook_embed", "encoder_final_ln.hook_scale", "decoder.0.hook_resid_mid_cross",
                            "decoder.1.hook_resid_mid_cross", "decoder_final_ln.hook_scale"]
    with pytest.raises(KeyError, match="not in this cache"):
        cache["decoder.0.hook_resid_pre"]
    _, one = t5.model.run_with_cache(t5.tokens[:1], decoder_input=t5.decoder[:1],
                                     names_filter="decoder.1.cross_attn.hook_pattern",
                                     remove_batch_dim=True)
    assert one["decoder.1.cross_attn.hook_pattern"].shape == (4, 5, 7) and len(one) == 1


def test_conversion_is_strict(t5, tmp_path):
    from safetensors.numpy import load_file, save_file

    from jtlens.io.conversions import convert_folder

    tensors = load_file(t5.folder / "model.safetensors")
    (tmp_path / "config.json").write_text((t5.folder / "config.json").read_text())
    save_file(dict(tensors, **{"encoder.block.0.layer.9.extra.weight": np.zeros(3, np.float32)}),
              tmp_path / "model.safetensors")
    with pytest.raises(ConversionError, match="not used by the conversion.*layer.9.extra"):
        convert_folder(tmp_path, progress=False)
    save_file({k: v for k, v in tensors.items() if "EncDecAttention.k" not in k},
              tmp_path / "model.safetensors")
    with pytest.raises(ConversionError, match="missing tensor 'decoder.block.0.layer.1.EncDecAttention.k.weight'"):
        convert_folder(tmp_path, progress=False)
    bad = dict(tensors, **{"shared.weight": tensors["shared.weight"][:, :16]})
    save_file(bad, tmp_path / "model.safetensors")
    with pytest.raises(ConversionError, match="shape"):
        convert_folder(tmp_path, progress=False)


def test_config_errors_name_the_setting():
    from jtlens.io.conversions import t5 as conv

    hf = dict(SMALL, num_layers=2, feed_forward_proj="relu")
    with pytest.raises(ConversionError, match="num_decoder_layers=3 differs"):
        conv.config_from_hf(dict(hf, num_decoder_layers=3))
    with pytest.raises(ConversionError, match="feed_forward_proj='gated-swish-x'"):
        conv.config_from_hf(dict(hf, feed_forward_proj="gated-swish-x"))


@pytest.mark.slow
def test_greedy_generation_matches_hugging_face(t5):
    """Greedy decoding from the decoder start token (0), a batch with padding. The stop token is
    one a row produces third, so that row finishes early: Hugging Face pads a finished row with
    the pad token, TransformerLens (and jtlens) with the stop token."""
    free = np.asarray(t5.model.generate(t5.tokens, one_zero_attention_mask=t5.mask,
                                        max_new_tokens=6, do_sample=False, stop_at_eos=False))
    row = int(np.nonzero(free[:, 3])[0][0])
    eos = int(free[row, 3])
    with torch.no_grad():
        want = t5.hf.generate(input_ids=t(t5.tokens), attention_mask=t(t5.mask), max_new_tokens=6,
                              do_sample=False, num_beams=1, eos_token_id=eos, pad_token_id=0).numpy()
    got = np.asarray(t5.model.generate(t5.tokens, one_zero_attention_mask=t5.mask, max_new_tokens=6,
                                       do_sample=False, eos_token_id=eos))
    stopped = got[:, 1:] == eos
    finished = np.pad(np.cumsum(stopped, axis=1) - stopped > 0, ((0, 0), (1, 0)))  # after a stop
    assert got[row, 4:].tolist() == [eos] * (got.shape[1] - 4)
    assert got.shape == want.shape and (np.where(finished, 0, got) == want).all()
    assert free.shape == (2, 7) and (free[:, 0] == 0).all()


@pytest.mark.slow
def test_sampling_freq_penalty_counts_the_tokens_so_far(t5):
    """A penalty far above any logit rules out every token already in a row (the start token
    included): the sampled rows never repeat; without it, sampling from this tiny vocabulary
    repeats."""
    kw = dict(max_new_tokens=12, do_sample=True, stop_at_eos=False, verbose=False)
    penalised = np.asarray(t5.model.generate(t5.tokens, one_zero_attention_mask=t5.mask,
                                             freq_penalty=1e4, **kw))
    free = np.asarray(t5.model.generate(t5.tokens, one_zero_attention_mask=t5.mask, **kw))
    assert all(len(set(row)) == len(row) for row in penalised.tolist())
    assert any(len(set(row)) < len(row) for row in free.tolist())


@pytest.mark.slow
def test_patching_sweeps_match_transformer_lens_loops(t5):
    """Every (layer, position) of an encoder hook and of a decoder hook, patched from the clean
    run into the corrupted one: the compiled sweep against TransformerLens run patch by patch."""
    from jtlens.patching.encoder_decoder import encoder_decoder_position_sweep

    corrupted = np.roll(t5.tokens, 1, axis=1)
    _, clean_cache = t5.model.run_with_cache(t5.tokens, decoder_input=t5.decoder)
    with torch.no_grad():
        _, tl_clean = t5.tl.run_with_cache(t(t5.tokens), decoder_input=t(t5.decoder))
    answer = 5

    def metric(logits):
        return logits[:, -1, answer].mean()

    for hook in ("encoder.*.hook_resid_pre", "decoder.*.hook_resid_mid_cross"):
        ours = encoder_decoder_position_sweep(t5.model.params, t5.model.cfg, corrupted, t5.decoder,
                                              hook, clean_cache[hook], metric, progress=False)
        n_pos = clean_cache[hook].shape[2]
        want = np.zeros((2, n_pos))
        for layer in range(2):
            name = hook.replace("*", str(layer))
            for pos in range(n_pos):
                def patch(act, hook, pos=pos, name=name):
                    act = act.clone()
                    act[:, pos] = tl_clean[name][:, pos]
                    return act

                with torch.no_grad():
                    logits = t5.tl.run_with_hooks(t(corrupted), decoder_input=t(t5.decoder),
                                                  fwd_hooks=[(name, patch)])
                want[layer, pos] = float(metric(logits))
        assert ours.shape == want.shape and max_diff(ours, want) <= ATOL, hook
        assert np.ptp(want) > 1e-3  # the patches move the metric


def test_weight_properties_match_transformer_lens(t5):
    for name in ("W_E", "W_U", "b_U", "W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O",
                 "W_in", "W_out", "b_in", "b_out"):
        assert max_diff(getattr(t5.model, name), getattr(t5.tl, name).detach().numpy()) == 0.0, name
    assert t5.model.all_head_labels() == t5.tl.all_head_labels()
    with pytest.raises(AttributeError, match="no attribute 'W_pos'"):
        t5.model.W_pos


@pytest.mark.slow
def test_optional_hooks_match_transformer_lens(t5):
    """use_attn_result (per-head results of self- and cross-attention) and use_hook_mlp_in: same
    names, same numbers. (TransformerLens's T5 crashes with use_split_qkv_input or use_attn_in:
    its cross-attention then expects per-head inputs but gets [batch, pos, d_model].)"""
    flags = dict(use_attn_result=True, use_hook_mlp_in=True)
    ours = HookedEncoderDecoder(t5.model.cfg.replace(**flags), t5.model.params)
    tl = tl_t5(t5.hf, t5.model.cfg.scale_decoder_outputs)
    for k, v in flags.items():
        setattr(tl.cfg, k, v)
    with torch.no_grad():
        _, tl_cache = tl.run_with_cache(t(t5.tokens), decoder_input=t(t5.decoder))
    _, cache = ours.run_with_cache(t5.tokens, decoder_input=t5.decoder)
    assert list(cache.keys()) == list(tl_cache.keys())
    assert_caches_match(cache, {k: v.numpy() for k, v in tl_cache.items()}, atol=ATOL)
    assert {"decoder.1.cross_attn.hook_result", "encoder.0.attn.hook_result",
            "decoder.0.hook_mlp_in"} <= set(cache.keys())


def test_other_classes_and_processing_refuse_t5(t5):
    """TransformerLens processes no T5 weights; the decoder and BERT classes point here."""
    from jtlens import loading

    with pytest.raises(ValueError, match="encoder-decoder.*use jtlens.HookedEncoderDecoder"):
        jtlens.HookedTransformer.from_pretrained(str(t5.folder))
    with pytest.raises(ValueError, match="encoder-decoder; load it with HookedEncoderDecoder"):
        jtlens.HookedEncoder.from_pretrained(str(t5.folder))
    cfg, params, _ = loading.load(str(t5.folder))  # default processing: none for T5
    assert cfg == t5.model.cfg
    assert all(max_diff(a, b) == 0.0 for a, b in zip(jax.tree_util.tree_leaves(params),
                                                      jax.tree_util.tree_leaves(t5.model.params)))


def test_config_knobs_are_checked():
    base = dict(n_layers=1, d_model=16, d_head=8, n_ctx=8, d_vocab=10)
    rel = dict(positional_embedding_type="relative_positional_bias",
               relative_attention_num_buckets=8, relative_attention_max_distance=16)
    with pytest.raises(ValueError, match="goes with relative_attention_num_buckets"):
        jtlens.Config(**base, positional_embedding_type="relative_positional_bias")
    with pytest.raises(ValueError, match="cross_attention .* needs positional_embedding_type"):
        jtlens.Config(**base, cross_attention=True)
    with pytest.raises(ValueError, match="scale_decoder_outputs is part of an encoder-decoder"):
        jtlens.Config(**base, **rel, scale_decoder_outputs=True)
    cfg = jtlens.Config(**base, **rel, cross_attention=True)
    assert cfg.encoder_config().attention_dir == "bidirectional"
    assert not cfg.encoder_config().cross_attention
    with pytest.raises(ValueError, match="encoder_config\\(\\) is for encoder-decoders"):
        cfg.encoder_config().encoder_config()


def test_relative_bias_settings_and_layer_by_layer_runs_are_refused():
    from jtlens.core.forward import context

    base = dict(n_layers=1, d_model=16, d_head=8, n_ctx=8, d_vocab=10,
                positional_embedding_type="relative_positional_bias")
    for buckets, distance in ((2, 16), (8, 4)):  # no exact buckets; no room for the log ones
        with pytest.raises(ValueError, match=f"relative_attention_num_buckets={buckets} must be"):
            jtlens.Config(**base, relative_attention_num_buckets=buckets,
                          relative_attention_max_distance=distance)
    cfg = jtlens.Config(**base, relative_attention_num_buckets=8, relative_attention_max_distance=16)
    # pieces run outside the forward would go without the bias table
    with pytest.raises(ValueError, match="relative-position-bias model .* one by one"):
        context(cfg, None, 1, 3)


@pytest.mark.slow
def test_sweep_and_generate_refuse_bad_inputs(t5):
    from jtlens.core.hooks import Hooks
    from jtlens.encoder_decoder_generation import generate_encoder_decoder
    from jtlens.patching.encoder_decoder import encoder_decoder_position_sweep

    _, cache = t5.model.run_with_cache(t5.tokens, decoder_input=t5.decoder)
    for hook in ("encoder.*.attn.hook_pattern", "decoder.*.cross_attn.hook_attn_scores"):
        with pytest.raises(ValueError, match="holds \\[batch, heads, query, key\\]"):
            encoder_decoder_position_sweep(t5.model.params, t5.model.cfg, t5.tokens, t5.decoder,
                                           hook, cache[hook], lambda x: x.mean(), progress=False)
    with pytest.raises(ValueError, match="scalar"):
        encoder_decoder_position_sweep(t5.model.params, t5.model.cfg, t5.tokens, t5.decoder,
                                       "encoder.*.hook_resid_pre", cache["encoder.*.hook_resid_pre"],
                                       lambda logits: logits[:, -1, 0], progress=False)
    args = (t5.model.params, t5.model.cfg, t5.tokens)
    with pytest.raises(ValueError, match="max_new_tokens=-1 must be"):
        generate_encoder_decoder(*args, -1, decoder_start_token_id=0)
    with pytest.raises(ValueError, match="decoder_start_token_id 999 is outside"):
        generate_encoder_decoder(*args, 2, decoder_start_token_id=999)
    with pytest.raises(ValueError, match="returns tokens only"):
        generate_encoder_decoder(*args, 2, decoder_start_token_id=0, hooks=Hooks(capture=True))


@pytest.mark.slow
@pytest.mark.parametrize("precomputed_cross", [True, False], ids=["cross_once", "cross_each_step"])
def test_cached_decoder_steps_equal_the_full_decoder_run(t5, precomputed_cross):
    """The decoder run one token at a time against a KeyValueCache (self-attention keys and
    values cached, the relative bias read at each token's slot; cross-attention keys and values
    projected once, or again each step) gives the logits of the whole decoder run, padding in
    the encoder input included. 9 decoder tokens reach the logarithmic buckets."""
    from jtlens.core.encoder_decoder import EncoderDecoderNames, encode
    from jtlens.core.engine import run_model
    from jtlens.core.hooks import HookRunner
    from jtlens.core.kv_cache import KeyValueCache
    from jtlens.core.pieces import cross_keys_values

    params, cfg = t5.model.params, t5.model.cfg
    decoder = np.random.default_rng(2).integers(2, VOCAB, (2, 9))
    want = encoder_decoder_forward(params, t5.tokens, decoder, cfg, attention_mask=t5.mask)
    names = EncoderDecoderNames(cfg)
    encoded = encode(params, t5.tokens, cfg, HookRunner(None, names.stacks["encoder"]), t5.mask)[0]
    cache = KeyValueCache.init(cfg, 2, 12, cross=cross_keys_values(params["blocks"], encoded)
                               if precomputed_cross else None)

    @jax.jit  # one compiled step, run 9 times
    def step(token, cache):
        out = run_model(params, token, cfg, HookRunner(None, names.stacks["decoder"]), "logits",
                        False, None, None, None, None, True, None, kv_cache=cache,
                        encoder=encoded, encoder_mask=t5.mask)
        return out[0][:, 0], out[4]

    steps = []
    for i in range(decoder.shape[1]):
        logits, cache = step(decoder[:, i:i + 1], cache)
        steps.append(np.asarray(logits))
    assert int(cache.length) == 9 and (cache.cross is not None) == precomputed_cross
    assert rel_diff(np.stack(steps, 1), want) <= 1e-5
