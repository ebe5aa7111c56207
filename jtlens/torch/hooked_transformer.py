"""HookedTransformer with a torch face: TransformerLens code that computes on the outputs with
torch runs with only the import changed.

    from jtlens.torch import HookedTransformer
    model = HookedTransformer.from_pretrained("smollm2-135m")
    logits, cache = model.run_with_cache("Hello")      # torch tensors, shared with JAX's arrays

The model inside is jtlens's (the compiled JAX forward); this wrapper turns its outputs into torch
tensors, its inputs into JAX arrays, and hands Python hook functions a torch tensor they may
edit in place.
"""

from __future__ import annotations

import jax
import torch

from jtlens.io.conversions.transformer_lens import flat_state_dict
from jtlens.tl import hooked_transformer as tl
from jtlens.torch.convert import TorchView, array, tensor, to_jax, to_torch


def torch_hook(fn):
    """A `run_with_hooks` hook on torch tensors as a hook on JAX arrays: `fn(act, hook)` gets a
    torch copy of the activation, and what it returns (or, returning None, the copy it edited
    in place) goes on through the forward."""
    def run(act, hook):
        if isinstance(act, jax.core.Tracer):
            raise TypeError(f"the torch hook function at {hook.name!r} was called while JAX traces "
                            f"the model (generate compiles its decode loop with the hooks in "
                            f"it): torch hooks run in model(...), run_with_hooks and "
                            f"run_with_cache; for generate, remove them and pass jax.numpy hooks: "
                            f"model.jax.generate(..., hooks=jtlens.Hooks(fns=...))")
        t = tensor(act).clone()  # the callback's buffer belongs to XLA; edits go to a copy
        out = fn(t, hook)
        return array(t if out is None else out) if isinstance(out, (torch.Tensor, type(None))) else to_jax(out)

    run.__wrapped__ = fn
    return run


class _JaxModel(tl.HookedTransformer):
    """jtlens's HookedTransformer whose registered hook functions take torch tensors (every way
    of adding one, `run_with_hooks`, `model.hooks()`, hook points' `add_hook`, comes here)."""

    def add_hook(self, name, hook, dir: str = "fwd", is_permanent: bool = False, level=None,
                 prepend: bool = False) -> None:
        super().add_hook(name, torch_hook(hook), dir, is_permanent, level, prepend)


class HookedTransformer(TorchView):
    """TransformerLens's HookedTransformer on jtlens, speaking torch: outputs (logits, loss,
    cache entries, weights, `W_Q`, `OV`) are torch tensors; inputs may be torch tensors; hook
    functions get torch tensors. Arguments as `jtlens.HookedTransformer`.

    `model.jax` is the JAX model inside (for `jtlens.Hooks`, sweeps, `jax.grad`).
    """

    def __init__(self, *args, **kwargs):
        object.__setattr__(self, "_inner", _JaxModel(*to_jax(args), **to_jax(kwargs)))

    @classmethod
    def from_pretrained(cls, model_name: str, **kwargs) -> "HookedTransformer":
        """As `jtlens.HookedTransformer.from_pretrained`."""
        return cls.wrap(_JaxModel.from_pretrained(model_name, **kwargs))

    @classmethod
    def from_pretrained_no_processing(cls, model_name: str, **kwargs) -> "HookedTransformer":
        """As `jtlens.HookedTransformer.from_pretrained_no_processing`."""
        return cls.wrap(_JaxModel.from_pretrained_no_processing(model_name, **kwargs))

    @property
    def jax(self) -> tl.HookedTransformer:
        return self._inner

    # The layer-stacked params become torch tensors first (shared, no copy) and are cut into
    # layers there: views, where cutting JAX arrays runs one program per layer and parameter
    # (SmolLM2: 480 of them, 0.9 s the first time in a process, 0.25 s after).
    def state_dict(self) -> dict[str, torch.Tensor]:
        """{TransformerLens name: tensor}, e.g. `blocks.0.attn.W_Q` [n_heads, d_model, d_head]."""
        return flat_state_dict(to_torch(self._inner.params), self._inner.cfg)

    def named_parameters(self):
        return iter(self.state_dict().items())

    def parameters(self):
        return iter(self.state_dict().values())
