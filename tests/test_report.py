"""Direct logit attribution in the `jtlens run` report vs TransformerLens 3.9."""

import numpy as np

import jtlens
from jtlens.report import direct_logit_attribution
from tests.oracle import max_diff, tl_model, to_jtlens, tokens_for, torch

CFG = dict(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, d_vocab=50, n_ctx=16,
           act_fn="gelu", normalization_type="LN")


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
