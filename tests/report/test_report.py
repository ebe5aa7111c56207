"""The `jtlens run` report's numbers vs TransformerLens 3.9: direct logit attribution (last
position, every position, answer minus wrong) and the logit lens."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jtlens
from jtlens.report import (INDUCTION_THRESHOLD, direct_logit_attribution, dla_by_position,
                           induction_text, logit_direction, logit_lens)
from tests.oracle import max_diff, tl_model, to_jtlens, tokens_for, torch

CFG = dict(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, d_vocab=50, n_ctx=16,
           act_fn="gelu", normalization_type="LN")


@pytest.mark.slow
def test_direct_logit_attribution_matches_transformer_lens():
    tl = tl_model(CFG)
    # TransformerLens's logit_attrs leave out ln_final's weight, so they are exact only after
    # fold_ln (its documented use); compare there.
    tl.process_weights_(fold_ln=True, center_writing_weights=False, center_unembed=False)
    cfg, params = to_jtlens(tl)
    model = jtlens.HookedTransformer(cfg, params)
    tokens = tokens_for(cfg, batch=1, pos=10)
    logits, cache = model.run_with_cache(tokens)
    target = int(np.asarray(logits[0, -1]).argmax())
    ours = direct_logit_attribution(model, cache, target)

    with torch.no_grad():
        _, tl_cache = tl.run_with_cache(torch.as_tensor(np.asarray(tokens)))
        heads = tl_cache.stack_head_results(layer=-1, pos_slice=-1)
        mlps = tl_cache.decompose_resid(mode="mlp", pos_slice=-1, incl_embeds=False)
        theirs_heads = tl_cache.logit_attrs(heads, tokens=target, pos_slice=-1)
        theirs_mlp = tl_cache.logit_attrs(mlps, tokens=target, pos_slice=-1)
    assert max_diff(ours["heads"].reshape(-1), theirs_heads[:, 0].numpy()) <= 1e-4
    assert max_diff(ours["mlp"], theirs_mlp[:, 0].numpy()) <= 1e-4
    total = sum(float(np.sum(v)) for v in ours.values())
    assert abs(total - float(logits[0, -1, target])) <= 1e-4


def _tl_and_ours(cfg_dict=CFG, fold=True):
    tl = tl_model(cfg_dict)
    if fold:
        tl.process_weights_(fold_ln=True, center_writing_weights=False, center_unembed=False)
    cfg, params = to_jtlens(tl)
    return tl, jtlens.HookedTransformer(cfg, params)


@pytest.mark.slow
def test_dla_at_every_position_and_for_a_difference_matches_transformer_lens():
    tl, model = _tl_and_ours()
    tokens = tokens_for(model.cfg, batch=1, pos=9)
    logits, cache = model.run_with_cache(tokens)
    answer, wrong = 7, 11
    ours = dla_by_position(model, cache, *logit_direction(model, answer, wrong))
    with torch.no_grad():
        _, tl_cache = tl.run_with_cache(torch.as_tensor(np.asarray(tokens)))
        heads = tl_cache.stack_head_results(layer=-1)                    # [L*H, batch, pos, d]
        mlps = tl_cache.decompose_resid(mode="mlp", incl_embeds=False)
        theirs_heads = tl_cache.logit_attrs(heads, tokens=answer, incorrect_tokens=wrong)
        theirs_mlp = tl_cache.logit_attrs(mlps, tokens=answer, incorrect_tokens=wrong)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    assert max_diff(ours["heads"], theirs_heads[:, 0].numpy().reshape(L, H, -1).transpose(2, 0, 1)) <= 1e-4
    assert max_diff(ours["mlp"], theirs_mlp[:, 0].numpy().T) <= 1e-4
    total = sum(np.asarray(v).reshape(9, -1).sum(-1) for v in ours.values())
    assert max_diff(total, logits[0, :, answer] - logits[0, :, wrong]) <= 1e-4


@pytest.mark.slow
def test_dla_adds_up_on_an_unprocessed_rms_model():
    """RMSNorm with its weight (no fold_ln), rotary, gated MLP: the parts still sum to the logit
    at every position."""
    cfg = jtlens.Config(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=48, d_vocab=40, n_ctx=16,
                        act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary",
                        gated_mlp=True, n_key_value_heads=2)
    params = jtlens.init_params(cfg, jax.random.PRNGKey(3))
    params["ln_final"]["w"] = 1.0 + 0.3 * jax.random.normal(jax.random.PRNGKey(4), (32,))
    model = jtlens.HookedTransformer(cfg, params)
    tokens = tokens_for(cfg, batch=1, pos=7)
    logits, cache = model.run_with_cache(tokens)
    parts = dla_by_position(model, cache, *logit_direction(model, 5))
    total = sum(np.asarray(v).reshape(7, -1).sum(-1) for v in parts.values())
    assert max_diff(total, logits[0, :, 5]) <= 1e-4


@pytest.mark.slow
def test_logit_lens_matches_transformer_lens_ln_final_and_unembed():
    tl, model = _tl_and_ours(fold=False)
    tokens = tokens_for(model.cfg, batch=1, pos=8)
    _, cache = model.run_with_cache(tokens)
    resid = jnp.concatenate([cache["blocks.*.hook_resid_pre"][:, 0],
                             cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]])
    ours = logit_lens(model, resid, answer=3, wrong=4)
    with torch.no_grad():
        theirs = tl.unembed(tl.ln_final(torch.as_tensor(np.asarray(resid)))).double()
    probs = torch.softmax(theirs, -1).numpy()
    assert (ours["top"] == probs.argmax(-1)).all()
    assert max_diff(ours["top_p"], probs.max(-1)) <= 1e-5
    assert max_diff(ours["answer_p"], probs[..., 3]) <= 1e-5
    assert max_diff(ours["diff"], (theirs[..., 3] - theirs[..., 4]).numpy()) <= 1e-4
    assert (ours["answer_rank"] == (theirs.numpy() > theirs.numpy()[..., 3:4]).sum(-1)).all()


def test_induction_text_claims_a_head_only_past_the_threshold():
    scores = np.array([[0.05, 0.1], [0.29, 0.02]])
    ind = dict(scores=scores, seq_len=20, threshold=INDUCTION_THRESHOLD)
    assert "no head scores 0.3 or more: no clear induction head" in induction_text(ind)
    ind["scores"] = np.array([[0.05, 0.1], [0.31, 0.02]])
    assert "1 head(s) score at least 0.3 (a clear induction head): L1H0." in induction_text(ind)


@pytest.mark.slow
def test_long_text_views_cover_a_window_and_say_so(tmp_path, monkeypatch):
    from jtlens.report import analysis as report

    monkeypatch.setattr(report, "WINDOW", 8)
    model = jtlens.HookedTransformer.from_pretrained("jtlens-tiny")
    text = "The return value is a list. The return value is a"                  # 13 tokens
    a = report.analyze(model, text, answer=model.to_single_token(" list"))
    n = len(a["str_tokens"])
    assert (a["lens_from"], a["lens_ids"].shape, a["answer_view"]["lens_p"].shape) == (n - 8, (3, 8), (3, 8))
    assert a["patterns"].shape == (2, 4, 8, 8) and a["last_attn"].shape == (2, 4, n)
    _, cache = model.run_with_cache(text)
    pattern = np.asarray(cache["blocks.*.attn.hook_pattern"][:, 0])             # [L, H, n, n]
    np.testing.assert_allclose(a["last_attn"], pattern[:, :, -1], atol=1e-6)
    np.testing.assert_allclose(a["patterns"], pattern[:, :, :8, :8], atol=1e-6)
    assert a["lens_strs"][-1][-1] == a["target_str"]                       # the final row is the output
    page = report.write_report(a, tmp_path).read_text()
    assert f"Of the {n} positions, the last 8 (from {n - 8}) are shown." in page
    assert f"The viewer shows the first 8 of {n} positions." in page
