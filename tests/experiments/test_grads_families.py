"""Every TransformerLens-config family (tests/oracle.py CONFIGS): jtlens's gradient of a logit
difference w.r.t. every default hook equals TransformerLens 3.9's backward hooks on the same
weights."""

import numpy as np
import pytest

from tests.oracle import CONFIGS, max_diff, tl_model, to_jtlens, tokens_for, torch

import jtlens
from jtlens import grads

ANSWER, WRONG = 7, 11


def logit_diff(logits):
    return (logits[:, -1, ANSWER] - logits[:, -1, WRONG]).sum()


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_grad_cache_equals_transformer_lens_backward_hooks(family):
    torch.set_num_threads(1)
    tl = tl_model(CONFIGS[family])
    cfg, params = to_jtlens(tl)
    tokens = tokens_for(cfg, batch=2, pos=6)
    ref = {}

    def collect(g, hook):  # a hook read on several paths (ln1 feeds q, k, v) fires once per path
        ref[hook.name] = ref.get(hook.name, 0) + g.detach().numpy()

    tl.reset_hooks()
    for name in jtlens.HookedTransformer(cfg, params).hook_names():  # (TL refuses optional ones)
        tl.add_hook(name, collect, dir="bwd")
    diff = (lambda l: (l[:, -1, ANSWER] - l[:, -1, WRONG]).sum())(tl(torch.tensor(np.asarray(tokens))))
    diff.backward()
    tl.reset_hooks()
    value, gcache = grads.grad_cache(params, cfg, tokens, logit_diff)
    assert abs(float(value) - diff.item()) <= 1e-4
    assert len(ref) > 10, sorted(ref)  # every block's hooks fired
    missing = set(ref) - set(gcache.keys())
    assert not missing, sorted(missing)
    for name, g in ref.items():
        assert max_diff(gcache[name], g) <= 1e-4 * max(1.0, np.abs(g).max()), (name, max_diff(gcache[name], g))
    if cfg.num_experts:  # routing indices are integers: no gradient, and TL's hook never fires
        assert "blocks.0.mlp.hook_expert_indices" not in ref
        with pytest.raises(ValueError, match="all integer-valued"):
            grads.grad_cache(params, cfg, tokens, logit_diff, "blocks.0.mlp.hook_expert_indices")
