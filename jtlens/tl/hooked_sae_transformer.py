"""HookedSAETransformer: SAELens's model facade, a HookedTransformer that splices SAEs in.

    model = HookedSAETransformer.from_pretrained("gpt2")
    logits = model.run_with_saes(tokens, saes=[sae])
    logits, cache = model.run_with_cache_with_saes(tokens, saes=[sae])
    cache["blocks.8.hook_resid_pre.hook_sae_acts_post"]

Attached SAEs are kept as data on the facade and become hook functions at call time
(`jtlens.sparse.splice`); the functional form, `jtlens.sparse.run_with_saes`, needs no state.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Optional, Sequence, Union

from jtlens.tl.hook_points import HookPointHandle, _Registered
from jtlens.tl.hooked_transformer import HookedTransformer
from jtlens.core.hooks import Hooks
from jtlens.core.hook_catalogue import hook_catalogue
from jtlens.experiments.sparse.sae import SAE, SAE_HOOKS
from jtlens.experiments.sparse.splice import Attached, SAEActivationCache, plan, sae_point

logger = logging.getLogger(__name__)


class HookedSAETransformer(HookedTransformer):
    """A HookedTransformer with SAELens's SAE methods: `add_sae`, `reset_saes`, `saes()`,
    `run_with_saes`, `run_with_cache_with_saes`, `run_with_hooks_with_saes`.

    Calls with SAEs attached or hook functions registered run eagerly with the layers unrolled
    (the SAEs' activations are gathered as the run goes); for compiled sweeps use the functional
    `jtlens.sparse` API.
    """

    _host_callbacks = False

    def __init__(self, *args, **kwargs):
        self._acts_to_saes: dict[str, Attached] = {}
        super().__init__(*args, **kwargs)

    # ------------------------------------------------------------------ attaching
    @property
    def acts_to_saes(self) -> dict[str, SAE]:
        """hook name -> the SAE attached there."""
        return {name: a.sae for name, a in self._acts_to_saes.items()}

    def add_sae(self, sae: SAE, use_error_term: Optional[bool] = None) -> None:
        """Attach `sae` at its `cfg.metadata.hook_name` (replacing one already there) until
        `reset_saes`. use_error_term: None keeps the SAE's own setting."""
        name = sae.cfg.metadata.hook_name
        try:
            full = hook_catalogue(self.cfg).one(name, "add_sae")
        except (ValueError, TypeError):
            logger.warning(f"No hook found for {name}. Skipping. Check model.hook_dict for "
                           f"available hooks.")
            return
        error = sae.use_error_term if use_error_term is None else use_error_term
        self._acts_to_saes[full] = Attached(sae, error, full)

    def reset_saes(self, act_names: Union[str, Sequence[str], None] = None) -> None:
        """Detach the SAEs at `act_names` (default: all)."""
        if isinstance(act_names, str):
            act_names = [act_names]
        for name in list(self._acts_to_saes) if act_names is None else act_names:
            full = hook_catalogue(self.cfg).canonical(name)
            if self._acts_to_saes.pop(full, None) is None:
                logger.warning(f"No SAE is attached to {name}. There's nothing to reset.")

    @contextlib.contextmanager
    def saes(self, saes: Union[SAE, Sequence[SAE]] = (), reset_saes_end: bool = True,
             use_error_term: Optional[bool] = None):
        """Attach `saes` inside the block; on exit restore the SAEs attached before."""
        before = dict(self._acts_to_saes)
        try:
            for sae in [saes] if isinstance(saes, SAE) else saes:
                self.add_sae(sae, use_error_term)
            yield self
        finally:
            if reset_saes_end:
                self._acts_to_saes = before

    # ------------------------------------------------------------------ hook points
    @property
    def hook_dict(self) -> dict[str, HookPointHandle]:
        """The model's hook points plus those of every attached SAE."""
        points = dict(super().hook_dict)
        for name in self._acts_to_saes:
            for leaf in SAE_HOOKS:
                points[f"{name}.{leaf}"] = HookPointHandle(self, f"{name}.{leaf}")
        return points

    def add_hook(self, name, hook, dir: str = "fwd", is_permanent: bool = False,
                 level: Optional[int] = None, prepend: bool = False) -> None:
        if not (isinstance(name, str) and sae_point(name)):
            return super().add_hook(name, hook, dir, is_permanent, level, prepend)
        full = f"{hook_catalogue(self.cfg).canonical(sae_point(name)[0])}.{sae_point(name)[1]}"
        if full not in self.hook_dict:
            raise ValueError(f"hook {name!r}: no SAE is attached at {sae_point(name)[0]!r}; "
                             f"add_sae first (attached: {sorted(self._acts_to_saes) or 'none'})")
        new = [_Registered(full, self._with_context(full, hook), is_permanent, level)]
        self._registered = new + self._registered if prepend else self._registered + new

    def _plan(self, capture: Any = None):
        registered = Hooks(capture=capture, fns=[(r.name, r.fn) for r in self._registered])
        return plan(list(self._acts_to_saes.values()), registered, hook_catalogue(self.cfg))

    def _persistent_hooks(self) -> Optional[Hooks]:
        if not self._acts_to_saes:
            return super()._persistent_hooks()
        return self._plan().model_hooks

    # ------------------------------------------------------------------ runs
    def run_with_cache(self, *args, names_filter=None, remove_batch_dim: bool = False,
                       return_cache_object: bool = True, pos_slice=None, **kwargs):
        """`HookedTransformer.run_with_cache`; with SAEs attached the cache also holds their hook
        points (names_filter may name them) and not the hooks they replace."""
        if not self._acts_to_saes:
            return super().run_with_cache(*args, names_filter=names_filter,
                                          remove_batch_dim=remove_batch_dim,
                                          return_cache_object=return_cache_object,
                                          pos_slice=pos_slice, **kwargs)
        p = self._plan(True if names_filter is None else names_filter)
        out, cache = self._run(*args, hooks=p.model_hooks, eager=True, capture=True, **kwargs)
        extra = {n: p.sink[n] for n in p.sae_names if n in p.sink}
        cache = SAEActivationCache.extend(cache, extra).with_model(self)
        if pos_slice is not None:
            cache = cache.slice_positions(pos_slice)
        if remove_batch_dim:
            cache.remove_batch_dim()
        return out, (cache if return_cache_object else cache.to_dict())

    def run_with_saes(self, *args, saes: Union[SAE, Sequence[SAE]] = (), reset_saes_end: bool = True,
                      use_error_term: Optional[bool] = None, **kwargs):
        """One forward with `saes` attached (then detached, unless reset_saes_end=False)."""
        with self.saes(saes, reset_saes_end, use_error_term):
            return self(*args, **kwargs)

    def run_with_cache_with_saes(self, *args, saes: Union[SAE, Sequence[SAE]] = (),
                                 reset_saes_end: bool = True, use_error_term: Optional[bool] = None,
                                 return_cache_object: bool = True, remove_batch_dim: bool = False,
                                 **kwargs):
        """`run_with_cache` with `saes` attached: (output, cache with the SAE hook points)."""
        with self.saes(saes, reset_saes_end, use_error_term):
            return self.run_with_cache(*args, return_cache_object=return_cache_object,
                                       remove_batch_dim=remove_batch_dim, **kwargs)

    def run_with_hooks_with_saes(self, *args, saes: Union[SAE, Sequence[SAE]] = (),
                                 reset_saes_end: bool = True, fwd_hooks: Sequence = (),
                                 bwd_hooks: Sequence = (), reset_hooks_end: bool = True,
                                 clear_contexts: bool = False, **kwargs):
        """`run_with_hooks` with `saes` attached; `fwd_hooks` may name SAE hook points."""
        with self.saes(saes, reset_saes_end):
            return self.run_with_hooks(*args, fwd_hooks=fwd_hooks, bwd_hooks=bwd_hooks,
                                       reset_hooks_end=reset_hooks_end,
                                       clear_contexts=clear_contexts, **kwargs)
