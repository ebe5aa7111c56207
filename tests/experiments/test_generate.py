"""Generation and the key/value cache against Hugging Face `generate` and TransformerLens 3.9.

Random models of every decoder family (tests/oracle.py's FAMILIES) are built offline, with weights
large enough (N(0, 1), untied unembedding) that greedy decoding does not collapse to one
repeated token, so token-for-token equality over 32 steps means something.
"""

import functools
import pathlib
import tempfile

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jtlens  # noqa: E402
from jtlens.loading import load  # noqa: E402
from tests.oracle import FAMILIES, TL_CAN_LOAD, hf_model, max_diff, save_hf, tl_from_folder  # noqa: E402

N_NEW = 32
LENGTHS = (7, 3, 6, 1)  # a batch of 4 prompts of different lengths, left-padded to 7


@functools.lru_cache(maxsize=None)
def family(name, sharp=True):
    """(folder, HF model, jtlens model without weight processing) for a decoder family.

    sharp: N(0, 1) weight matrices and an untied unembedding (tied N(0, 1) embeddings make
    greedy decoding repeat its input), for token-level tests; otherwise Hugging Face's init
    (activations of unit scale), for tests of the numbers themselves.
    """
    torch.manual_seed(0)
    config = FAMILIES[name]()
    config.tie_word_embeddings = not sharp and config.tie_word_embeddings
    hf = hf_model(name, config)
    with torch.no_grad():
        for pname, p in hf.named_parameters():
            if p.ndim >= 2 and sharp:
                p.normal_(0.0, 1.0)
            elif "norm" in pname or "ln" in pname or pname.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    hf.generation_config.eos_token_id = None  # stop only where a test says so
    hf.generation_config.pad_token_id = 0
    folder = pathlib.Path(tempfile.mkdtemp())  # no family name in the path: TL guesses by it
    save_hf(hf, name, folder)
    model = jtlens.HookedTransformer.from_pretrained_no_processing(folder, progress=False)
    return folder, hf, model


def prompts(batch_lengths, seed=0, width=None):
    """Left-padded random prompts: (tokens [batch, width], attention_mask [batch, width])."""
    rng = np.random.default_rng(seed)
    width = width or max(batch_lengths)
    tokens = np.zeros((len(batch_lengths), width), np.int64)
    mask = np.zeros_like(tokens)
    for i, n in enumerate(batch_lengths):
        tokens[i, width - n:] = rng.integers(1, 97, n)
        mask[i, width - n:] = 1
    return tokens, mask


def hf_generate(hf, tokens, mask, **kw):
    with torch.no_grad():
        return hf.generate(torch.tensor(tokens), attention_mask=torch.tensor(mask),
                           max_new_tokens=N_NEW, do_sample=False, **kw).numpy()


def greedy(model, tokens, mask, **kw):
    return np.asarray(model.generate(tokens, attention_mask=mask, max_new_tokens=N_NEW,
                                     do_sample=False, stop_at_eos=False, verbose=False, **kw))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FAMILIES))
def test_greedy_matches_hugging_face(name):
    _, hf, model = family(name)
    for lengths in (LENGTHS, (7,)):  # four prompts, then the first of them alone
        tokens, mask = prompts(lengths)
        ref = hf_generate(hf, tokens, mask)
        if len(lengths) > 1:  # (one prompt alone may settle into a loop; four rows do not)
            assert len(np.unique(ref[:, -N_NEW:])) > 8, "degenerate test: greedy repeats itself"
        ours = greedy(model, tokens, mask)
        assert ours.shape == ref.shape
        np.testing.assert_array_equal(ours, ref, err_msg=f"{name}, prompt lengths {lengths}")
        np.testing.assert_array_equal(greedy(model, tokens, mask, use_past_kv_cache=False), ref)


@pytest.mark.slow
def test_greedy_matches_hugging_face_fast():
    """The developer-loop subset of the family sweep: GPT-2 (learned positions) and Mistral
    (rotary, GQA, a sliding window) on a left-padded batch."""
    for name in ("gpt2", "mistral"):
        _, hf, model = family(name)
        tokens, mask = prompts(LENGTHS)
        np.testing.assert_array_equal(greedy(model, tokens, mask), hf_generate(hf, tokens, mask))


@pytest.mark.slow
@pytest.mark.parametrize("name", TL_CAN_LOAD)
def test_greedy_matches_transformer_lens(name):
    folder, _, _ = family(name)
    tl = tl_from_folder(folder)
    # Without a tokenizer, TransformerLens 3.9's cached generate fails on learned positions (the
    # attention mask it builds lags the cache by a step); with one it is fine.
    tl.set_tokenizer(_word_tokenizer())
    cfg, params, _ = load(folder, progress=False)  # TransformerLens's processing, as tl has
    tokens, _ = prompts((7,), seed=3)  # ids >= 1: no id reads as padding
    with torch.no_grad():
        ref = tl.generate(torch.tensor(tokens), max_new_tokens=N_NEW, do_sample=False,
                          stop_at_eos=False, verbose=False).numpy()
    ours = jtlens.generate(params, cfg, tokens, N_NEW, do_sample=False, stop_at_eos=False)
    np.testing.assert_array_equal(np.asarray(ours), ref)


def _word_tokenizer():
    """A word-level tokenizer over "w0".."w96" (w0 = BOS = EOS = pad), for text prompts."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(97)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    folder = tempfile.mkdtemp()  # TransformerLens's set_tokenizer reloads it from its folder
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="w0", eos_token="w0",
                                         pad_token="w0").save_pretrained(folder)
    return transformers.AutoTokenizer.from_pretrained(folder)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_text_batch_matches_transformer_lens(name):
    """A list of prompts of different lengths through both facades: left padding, BOS,
    decoding to strings."""
    folder, _, _ = family(name)
    tl = tl_from_folder(folder)
    tl.set_tokenizer(_word_tokenizer(), default_padding_side="right")
    cfg, params, _ = load(folder, progress=False)
    model = jtlens.HookedTransformer(cfg, params, _word_tokenizer())
    texts = ["w5 w17 w3 w44 w9", "w8", "w60 w61 w2"]
    kw = dict(max_new_tokens=12, do_sample=False, stop_at_eos=False, verbose=False)
    with torch.no_grad():
        ref_text = tl.generate(texts, **kw)
        ref_tokens = tl.generate(texts, return_type="tokens", **kw).numpy()
    assert model.generate(texts, **kw) == ref_text
    np.testing.assert_array_equal(np.asarray(model.generate(texts, return_type="tokens", **kw)),
                                  ref_tokens)
    assert model.generate(texts[0], **kw) == tl.generate(texts[0], **kw)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FAMILIES))
def test_cached_forward_equals_full_forward_at_every_step(name):
    _, _, model = family(name, sharp=False)
    tokens, mask = prompts(LENGTHS, seed=1, width=10)
    full = model(tokens, attention_mask=mask)
    cache = jtlens.KeyValueCache.from_model(model, batch=4, max_len=12)
    steps = [model(tokens[:, :5], attention_mask=mask[:, :5], past_kv_cache=cache)]
    for p in range(5, 10):  # then one token at a time, as generation feeds them
        steps.append(model(tokens[:, p:p + 1], attention_mask=mask[:, p:p + 1], past_kv_cache=cache))
    real = mask.astype(bool)
    for p, logits in zip([slice(0, 5)] + list(range(5, 10)), steps):
        step = np.asarray(full)[:, p].reshape(logits.shape)
        assert max_diff(np.where(real[:, p].reshape(logits.shape[:2])[..., None], logits, 0),
                        np.where(real[:, p].reshape(logits.shape[:2])[..., None], step, 0)) <= 1e-4
    assert int(cache.length) == 10


@pytest.mark.slow
def test_cache_matches_transformer_lens_cache_workflow():
    """TransformerLens's own cache on the same weights: prompt, then one token at a time."""
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    folder, _, _ = family("llama", sharp=False)
    tl = tl_from_folder(folder)
    tl.set_tokenizer(_word_tokenizer())  # TransformerLens's cache path builds masks with it
    cfg, params, _ = load(folder, progress=False)
    model = jtlens.HookedTransformer(cfg, params)
    tokens, _ = prompts((9,), seed=2)
    theirs = TransformerLensKeyValueCache.init_cache(tl.cfg, "cpu", 1)
    ours = jtlens.KeyValueCache.init(cfg, 1, 10)
    for a, b in [(0, 6), (6, 7), (7, 8), (8, 9)]:
        with torch.no_grad():
            ref = tl(torch.tensor(tokens[:, a:b]), past_kv_cache=theirs).numpy()
        assert max_diff(model(tokens[:, a:b], past_kv_cache=ours), ref) <= 1e-4
    frozen = ours.freeze()
    model(tokens[:, :1], past_kv_cache=frozen)
    assert int(frozen.length) == 9  # a frozen cache is read, not extended


@pytest.mark.slow
def test_eos_stops_each_row_like_hugging_face():
    _, hf, model = family("llama")
    tokens, mask = prompts(LENGTHS)
    free = hf_generate(hf, tokens, mask)
    # A token row 0 produces early and row 3 never: some rows stop, others run to the end.
    eos = next(int(t) for t in free[0, 7:] if t not in free[3, 7:])
    ref = hf_generate(hf, tokens, mask, eos_token_id=eos, pad_token_id=eos)
    ours = np.asarray(model.generate(tokens, attention_mask=mask, max_new_tokens=N_NEW,
                                     do_sample=False, eos_token_id=eos, verbose=False))
    np.testing.assert_array_equal(ours, ref)
    assert ours[0, -1] == eos and ours[3, -1] != eos
    # Several stop ids; the loop ends once every row has stopped (fewer than N_NEW tokens).
    stops = [int(t) for t in np.unique(free[:, 7 + 2])]
    ours = model.generate(tokens, attention_mask=mask, max_new_tokens=N_NEW, do_sample=False,
                          eos_token_id=stops, verbose=False)
    ref = hf_generate(hf, tokens, mask, eos_token_id=stops, pad_token_id=stops[0])
    np.testing.assert_array_equal(np.asarray(ours), ref)
    assert ours.shape[1] == 7 + 3


def _steer_hf(hf, layer, vector):
    """A torch forward pre-hook adding `vector` to the residual stream entering `layer`."""
    blocks = hf.model.layers if hasattr(hf, "model") else hf.transformer.h
    delta = torch.tensor(np.asarray(vector))

    def pre_hook(module, args, kwargs):
        if args:
            return (args[0] + delta,) + args[1:], kwargs
        return args, dict(kwargs, hidden_states=kwargs["hidden_states"] + delta)

    return blocks[layer].register_forward_pre_hook(pre_hook, with_kwargs=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_steering_during_generation_matches_hugging_face_hook(name):
    _, hf, model = family(name)
    tokens, mask = prompts(LENGTHS, seed=4)
    vector = 3.0 * np.random.default_rng(5).standard_normal(model.cfg.d_model).astype(np.float32)
    handle = _steer_hf(hf, 0, vector)
    try:
        ref = hf_generate(hf, tokens, mask)
        full_mask = np.concatenate([mask, np.ones((4, N_NEW), np.int64)], 1)
        positions = np.maximum(np.cumsum(full_mask, 1) - 1, 0)  # as generate shifts them
        with torch.no_grad():  # hidden_states[1]: the residual after block 0 (downstream of the hook)
            ref_hidden = hf(torch.tensor(ref), attention_mask=torch.tensor(full_mask),
                            position_ids=torch.tensor(positions),
                            output_hidden_states=True).hidden_states[1].numpy()
    finally:
        handle.remove()
    assert (ref != hf_generate(hf, tokens, mask)).any(), "the vector does not steer: weak test"
    steer = jtlens.Hooks(add={"blocks.0.hook_resid_pre": vector})
    np.testing.assert_array_equal(greedy(model, tokens, mask, hooks=steer), ref)
    with model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", lambda act, hook: act + vector)]):
        np.testing.assert_array_equal(greedy(model, tokens, mask), ref)
    # The activations of the steered, generated sequence in one ActivationCache.
    out, cache = model.generate(tokens, attention_mask=mask, max_new_tokens=N_NEW,
                                do_sample=False, stop_at_eos=False, verbose=False, hooks=steer,
                                return_cache=True, names_filter="blocks.0.hook_resid_post")
    np.testing.assert_array_equal(np.asarray(out), ref)
    real = full_mask.astype(bool)
    ours, theirs = np.asarray(cache["blocks.0.hook_resid_post"])[real], ref_hidden[real]
    scale = theirs.std()  # the N(0, 1) model's residual is far from unit scale: compare relative
    assert max_diff(ours / scale, theirs / scale) <= 1e-4


def _softmax(x):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max())
    return e / e.sum()


@pytest.mark.slow
@pytest.mark.parametrize("options", [dict(temperature=1.0), dict(temperature=0.7, top_k=10),
                                     dict(temperature=1.3, top_p=0.8),
                                     dict(temperature=1.0, freq_penalty=2.0)])
def test_sampled_token_frequencies_follow_the_softmax(options):
    """One sampling step drawn 20000 times (a batch of copies of one prompt): a chi-square
    test against the model's own next-token distribution, computed here in numpy."""
    from scipy.stats import chisquare

    _, _, model = family("gpt2")
    scale = 0.3  # soften the N(0, 1) model: ~90 tokens with visible probability, 8 nats apart
    params = jax.tree_util.tree_map(lambda a: a, model.params)
    params["unembed"] = {"W_U": model.params["unembed"]["W_U"] * scale,
                         "b_U": model.params["unembed"]["b_U"] * scale}
    prompt = np.array([[5, 9, 9, 40, 9, 17]])
    logits = np.asarray(jtlens.forward(params, prompt, model.cfg))[0, -1].astype(np.float64)
    x = logits / options["temperature"] - options.get("freq_penalty", 0.0) * np.bincount(
        prompt[0], minlength=logits.size)
    if "top_k" in options:
        x[x < np.sort(x)[-options["top_k"]]] = -np.inf
    if "top_p" in options:
        order = np.argsort(-x)
        before = np.cumsum(_softmax(x)[order]) - _softmax(x)[order]
        x[order[before > options["top_p"]]] = -np.inf
    expected = _softmax(x)
    n = 20000
    tokens = jtlens.generate(params, model.cfg, np.repeat(prompt, n, 0), 1,
                             key=jax.random.PRNGKey(0), stop_at_eos=False, **options)
    counts = np.bincount(np.asarray(tokens)[:, -1], minlength=logits.size)
    assert counts[expected == 0].sum() == 0, "sampled a token the filters remove"
    keep = expected * n >= 5  # chi-square needs expected counts >= 5: pool the rest
    pool = lambda p: np.append(p[keep], p[~keep].sum())
    valid = pool(expected) > 0
    obs, exp = pool(counts)[valid], pool(expected)[valid] * n
    assert keep.sum() >= 10, "too few likely tokens for a meaningful test"
    assert chisquare(obs, exp).pvalue > 1e-3
    # The test has power: the untempered, unfiltered softmax is rejected when it differs.
    if options != dict(temperature=1.0):
        wrong = pool(_softmax(logits))[valid]
        assert chisquare(obs, wrong / wrong.sum() * n).pvalue < 1e-6


@pytest.mark.slow
def test_sampling_is_reproducible_from_the_key():
    _, _, model = family("llama")
    tokens, mask = prompts(LENGTHS)
    run = lambda seed, **kw: np.asarray(jtlens.generate(
        model.params, model.cfg, tokens, 16, key=jax.random.PRNGKey(seed), attention_mask=mask,
        stop_at_eos=False, top_k=20, **kw))
    first = run(0)
    np.testing.assert_array_equal(first, run(0))
    np.testing.assert_array_equal(first, run(0, use_past_kv_cache=False))
    assert (first != run(1)).any()
    # The facade advances its own key: two calls differ, an explicit key repeats.
    a = model.generate(tokens, attention_mask=mask, max_new_tokens=8, stop_at_eos=False,
                       verbose=False)
    b = model.generate(tokens, attention_mask=mask, max_new_tokens=8, stop_at_eos=False,
                       verbose=False)
    assert (np.asarray(a) != np.asarray(b)).any()
    key = jax.random.PRNGKey(7)
    np.testing.assert_array_equal(
        np.asarray(model.generate(tokens, attention_mask=mask, max_new_tokens=8,
                                  stop_at_eos=False, verbose=False, key=key)),
        np.asarray(model.generate(tokens, attention_mask=mask, max_new_tokens=8,
                                  stop_at_eos=False, verbose=False, key=key)))


def test_bad_input_is_a_one_line_error():
    _, _, model = family("gpt2")
    p, cfg = model.params, model.cfg
    tokens = np.array([[1, 2, 3]])
    key = jax.random.PRNGKey(0)
    cases = [
        (dict(max_new_tokens=-1), "max_new_tokens=-1 must be an integer >= 0"),
        (dict(max_new_tokens=cfg.n_ctx), "beyond the model's context n_ctx=64"),
        (dict(max_new_tokens=2, top_p=0.0, key=key), r"top_p=0.0 must lie in \(0, 1\]"),
        (dict(max_new_tokens=2, top_p=1.5, key=key), r"top_p=1.5 must lie in \(0, 1\]"),
        (dict(max_new_tokens=2, temperature=-0.5, key=key), "temperature=-0.5 is negative"),
        (dict(max_new_tokens=2), "sampling needs a PRNG key"),
        (dict(max_new_tokens=2, do_sample=False, stop_at_eos=True), "stop_at_eos needs eos_token_id"),
        (dict(max_new_tokens=2, do_sample=False, attention_mask=np.array([[1, 1, 0]])),
         "pad prompts on the left"),
    ]
    for kw, message in cases:
        kw = dict(dict(stop_at_eos=False), **kw)
        with pytest.raises(ValueError, match=message) as err:
            jtlens.generate(p, cfg, tokens, **kw)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="return_type='embeds'"):
        model.generate(tokens, max_new_tokens=2, return_type="embeds")
    with pytest.raises(ValueError, match="too few for 5 more tokens"):
        model(np.ones((1, 5), np.int64), past_kv_cache=jtlens.KeyValueCache.init(cfg, 1, 4))


@pytest.mark.slow
def test_encoders_refuse_generation_and_the_cache():
    cfg = jtlens.Config(n_layers=1, d_model=16, n_heads=2, d_head=8, d_vocab=30, n_ctx=16,
                        post_ln=True, attention_dir="bidirectional", mlm_head=True)
    encoder = jtlens.HookedEncoder(cfg)
    message = "this model is an encoder"
    with pytest.raises(ValueError, match=message):
        encoder.generate(np.array([[1, 2]]), max_new_tokens=2)
    with pytest.raises(ValueError, match=message):
        jtlens.KeyValueCache.init(cfg, 1, 8)
    with pytest.raises(ValueError, match=message):
        jtlens.generate(encoder.params, cfg, np.array([[1, 2]]), 2, do_sample=False,
                        stop_at_eos=False)


def test_verbose_progress_bar_counts_the_tokens(capsys):
    _, _, model = family("gpt2")
    out = model.generate(np.array([[1, 2, 3]]), max_new_tokens=5, do_sample=False,
                         stop_at_eos=False, verbose=True)
    assert out.shape == (1, 8)
    assert "5/5" in capsys.readouterr().err
