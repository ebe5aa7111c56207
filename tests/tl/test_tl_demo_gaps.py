"""The API gaps TransformerLens's demos hit first (issue 27): each now works as in TL 3.9."""

import jax
import numpy as np
import pytest

import jtlens
from jtlens import utils
from jtlens.hook_points import HookPoint


@pytest.mark.slow
def test_hook_point_import_path_and_type():
    seen = []

    def hook(act, hook: HookPoint):
        seen.append((isinstance(hook, HookPoint), hook.name))

    model = jtlens.HookedTransformer.from_pretrained("jtlens-tiny")
    model.run_with_hooks("a b", fwd_hooks=[("blocks.0.hook_resid_pre", hook)])
    assert seen == [(True, "blocks.0.hook_resid_pre")]


def test_get_device_and_from_pretrained_device():
    device = utils.get_device()
    assert device == {"gpu": "cuda"}.get(jax.devices()[0].platform, jax.devices()[0].platform)
    model = jtlens.HookedTransformer.from_pretrained("jtlens-tiny", device=device,
                                                     move_to_device=True)
    assert model.params["embed"]["W_E"].devices() == {jax.devices()[0]}


@pytest.mark.slow
def test_checkpoint_fields():
    import transformer_lens

    tl_cfg = transformer_lens.HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=4, d_head=4,
                                                      d_vocab=10, act_fn="relu",
                                                      checkpoint_index=0, checkpoint_value=1000)
    cfg = jtlens.Config.unwrap(tl_cfg)
    assert (cfg.checkpoint_index, cfg.checkpoint_value) == (0, 1000)
    assert np.isfinite(np.asarray(jtlens.HookedTransformer(cfg)(np.array([[1, 2]])))).all()
