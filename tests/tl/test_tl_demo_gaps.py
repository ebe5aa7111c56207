"""The API gaps TransformerLens's demos hit first (issue 27): each now works as in TL 3.9."""

from collections import Counter

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


@pytest.mark.slow
@pytest.mark.parametrize("flags", [{}, {"use_attn_result": True, "use_split_qkv_input": True,
                                        "use_hook_mlp_in": True}])
def test_predicate_hooks_fire_where_transformer_lens_fires(flags):
    """Main_Demo's `not_in_late_block_filter`: a predicate in run_with_hooks reaches only the hook
    points the forward runs, the same ones as TransformerLens 3.9 (which calls ln1's hooks once
    per query, key and value input; jtlens once: the README's table says so)."""
    from tests.oracle import torch
    from tests.tl_port import _jtlens, _transformer_lens, model

    torch.set_num_threads(1)
    keep = lambda name: name.startswith("blocks.0.") or not name.startswith("blocks")  # noqa: E731
    calls = {}
    for lib in (_transformer_lens(), _jtlens()):
        m = model(lib, **flags)
        seen = calls.setdefault(lib.name, [])
        m.run_with_hooks(lib.tensor(np.array([[1, 2, 3]])), return_type=None,
                         fwd_hooks=[(keep, lambda act, hook: seen.append(hook.name))])
    ours, theirs = Counter(calls["jtlens"]), Counter(calls["transformer_lens"])
    if not flags:  # TransformerLens's one ln1 runs on the query, key and value inputs in turn
        theirs.update({"blocks.0.ln1.hook_scale": -2, "blocks.0.ln1.hook_normalized": -2})
    assert ours == theirs and sum(ours.values()) >= 20
