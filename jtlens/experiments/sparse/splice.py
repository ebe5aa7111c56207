"""Splicing SAEs into a forward: each attached SAE is a hook function at its hook name.

    logits = run_with_saes(params, tokens, cfg, [Attached(sae)])
    logits, cache = run_with_cache_with_saes(params, tokens, cfg, [Attached(sae, True)])
    cache["blocks.0.hook_resid_pre.hook_sae_acts_post"]        # [batch, pos, d_sae]

The activation at the SAE's hook is replaced by its reconstruction (plus the error term
`x - recon` when `use_error_term`, so everything downstream is exact while the features stay
editable). The SAE's own hook points are addressed under SAELens's names,
`<hook>.hook_sae_input / _acts_pre / _acts_post / _recons / _error / _output`, in the same
`Hooks` as the model's: `patch`, `add` and `fns` entries act on them, `capture` reads them.
SAEs are pytree leaves of `Attached`, so jit, vmap and grad go through them.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from jtlens.core.cache import ActivationCache
from jtlens.core.config import Config
from jtlens.core.hooks import HookNames, HookPoint, Hooks, _is_act_key
from jtlens.core.forward import forward, forward_with_cache
from jtlens.core.hook_catalogue import hook_catalogue
from jtlens.experiments.sparse.sae import SAE, SAE_HOOKS


@dataclasses.dataclass(frozen=True)
class Attached:
    """An SAE spliced in at `hook_name` (default: its `cfg.metadata.hook_name`)."""

    sae: SAE
    use_error_term: bool = False
    hook_name: Optional[str] = None

    @property
    def at(self) -> str:
        name = self.hook_name or self.sae.cfg.metadata.hook_name
        if not name:
            raise ValueError("this SAE's cfg.metadata.hook_name is empty: give "
                             "Attached(sae, hook_name='blocks.L.hook_resid_pre')")
        return name


jax.tree_util.register_dataclass(Attached, data_fields=("sae",),
                                 meta_fields=("use_error_term", "hook_name"))


def _as_attached(saes) -> list[Attached]:
    if isinstance(saes, (SAE, Attached)):
        saes = [saes]
    return [s if isinstance(s, Attached) else Attached(s) for s in saes]


def sae_point(name: str) -> Optional[tuple[str, str]]:
    """`blocks.0.hook_resid_pre.hook_sae_acts_post` -> (`blocks.0.hook_resid_pre`,
    `hook_sae_acts_post`); None for a model hook name."""
    if not isinstance(name, str):
        return None
    base, dot, leaf = name.rpartition(".")
    return (base, leaf) if dot and leaf in SAE_HOOKS else None


@dataclasses.dataclass
class _Plan:
    """A run's hooks split into the model's and each SAE's, with the capture sink."""

    model_hooks: Hooks
    sink: dict                       # full SAE hook name -> captured array
    sae_names: list                  # every SAE hook name, in execution order
    spliced: list                    # model hook names an SAE replaces


def plan(saes, hooks: Optional[Hooks], names: HookNames) -> _Plan:
    """Turn attached SAEs plus a `Hooks` that may name SAE hook points into one model `Hooks`
    whose `fns` run the SAEs (applying the SAE-point edits and capturing into `sink`)."""
    attached = _as_attached(saes)
    hooks = hooks or Hooks()
    where: dict[str, Attached] = {}
    for a in attached:
        full = names.one(a.at, "an SAE's hook")
        if full in where:
            raise ValueError(f"two SAEs are attached at {full!r}; attach one per hook name")
        where[full] = a
    sae_names = [f"{h}.{leaf}" for h in where for leaf in SAE_HOOKS
                 if leaf != "hook_sae_error" or where[h].use_error_term]

    def owner(key: str) -> str:
        base, leaf = sae_point(key)
        full = names.canonical(base)
        if full not in where:
            raise ValueError(f"hook {key!r} is an SAE hook point, but no SAE is attached at "
                             f"{full!r} (attached: {sorted(where) or 'none'})")
        return f"{full}.{leaf}"

    sub_patch = {owner(k): v for k, v in hooks.patch.items() if sae_point(k)}
    sub_add = {owner(k): v for k, v in hooks.add.items() if sae_point(k)}
    sub_fns: dict[str, list] = {}
    model_fns = []
    for key, fns in hooks.fns:
        if callable(key) and not isinstance(key, str):
            for n in sae_names:
                if key(n):
                    sub_fns.setdefault(n, []).extend(fns)
            model_fns.append((key, fns))
        elif sae_point(key):
            sub_fns.setdefault(owner(key), []).extend(fns)
        else:
            model_fns.append((key, fns))
    captured, model_capture = _split_capture(hooks.capture, names, sae_names, owner)
    model_capture = [n for n in model_capture if n not in where]  # SAELens: the SAE replaces it

    sink: dict = {}

    def point_fn(full_hook: str, layer):
        def hook(leaf: str, act):
            name = f"{full_hook}.{leaf}"
            if name in sub_patch:
                value, mask = sub_patch[name]
                act = jnp.where(True if mask is None else mask, jnp.asarray(value).astype(act.dtype), act)
            if name in sub_add:
                act = act + jnp.asarray(sub_add[name]).astype(act.dtype)
            for f in sub_fns.get(name, ()):
                out = f(act, HookPoint(name, layer))
                if out is not None:
                    if out.shape != act.shape:
                        raise ValueError(f"hook function at {name!r} returned shape "
                                         f"{tuple(out.shape)}; the activation has shape "
                                         f"{tuple(act.shape)}")
                    act = out.astype(act.dtype)
            if name in captured:
                sink[name] = act
            return act
        return hook

    def splice_fn(a: Attached, full: str):
        def run(act, hp: HookPoint):
            layer = hp._layer
            return a.sae.forward(act, point_fn(full, layer), a.use_error_term).astype(act.dtype)
        return run

    fns = model_fns + [(full, (splice_fn(a, full),)) for full, a in where.items()]
    model_hooks = Hooks(capture=tuple(model_capture) or None, patch={k: v for k, v in hooks.patch.items()
                                                                    if not sae_point(k)},
                        add={k: v for k, v in hooks.add.items() if not sae_point(k)}, fns=fns)
    return _Plan(model_hooks, sink, sae_names, list(where))


def _split_capture(capture, names: HookNames, sae_names: list, owner: Callable):
    """(SAE hook names captured, model hook names captured) from a capture selection."""
    if capture is None or capture is False:
        return set(), []
    if capture is True:
        return set(sae_names), names.select(True)
    if callable(capture):
        return {n for n in sae_names if capture(n)}, names.select(capture)
    items = [capture] if isinstance(capture, str) or _is_act_key(capture) else list(capture)
    subs = {owner(i) for i in items if sae_point(i)}
    rest = [i for i in items if not sae_point(i)]
    return subs, names.select(rest) if rest else []


def run_with_saes(params, tokens, cfg: Config, saes, hooks: Optional[Hooks] = None, **kwargs):
    """`jtlens.forward` with SAEs spliced in (`saes`: SAEs, `Attached`s, or a list of them).

    `hooks` may also edit the SAEs' hook points (`<hook>.hook_sae_acts_post`, ...). Keyword
    arguments go to `forward` (return_type, attention_mask, ...). Returns the output."""
    if hooks is not None and hooks.capture:
        raise ValueError("run_with_saes returns only the output; capture activations with "
                         "run_with_cache_with_saes")
    p = plan(saes, hooks, hook_catalogue(cfg))
    return forward(params, tokens, cfg, p.model_hooks, **kwargs)


def run_with_cache_with_saes(params, tokens, cfg: Config, saes, hooks: Optional[Hooks] = None,
                             **kwargs):
    """`forward_with_cache` with SAEs spliced in: (output, SAEActivationCache).

    `hooks.capture` selects model and SAE hook names (default: everything, SAE points included).
    The model hook an SAE replaces is not in the cache (as in SAELens); read
    `<hook>.hook_sae_input` / `.hook_sae_output` instead. Layers run unrolled so the SAE
    points can be recorded."""
    hooks = hooks if hooks is not None else Hooks(capture=True)
    names = hook_catalogue(cfg)
    p = plan(saes, hooks, names)
    kwargs.setdefault("scan", False)
    out, cache = forward_with_cache(params, tokens, cfg, p.model_hooks, **kwargs)
    extra = {n: p.sink[n] for n in p.sae_names if n in p.sink}
    return out, SAEActivationCache.extend(cache, extra)


@dataclasses.dataclass(eq=False)
class SAEActivationCache(ActivationCache):
    """An ActivationCache that also holds SAE hook points (`<hook>.hook_sae_acts_post`, ...)."""

    sae_acts: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def extend(cls, cache: ActivationCache, sae_acts: dict) -> "SAEActivationCache":
        fields = {f.name: getattr(cache, f.name) for f in dataclasses.fields(ActivationCache)}
        return cls(**fields, sae_acts=dict(sae_acts))

    def keys(self) -> list[str]:
        """Model hook names in execution order, each SAE's points after its hook's neighbours."""
        model = super().keys()
        order = {n: i for i, n in enumerate(self.names.names(optional=True))}
        keyed = [(order.get(n, 0), 0, n) for n in model]
        keyed += [(order.get(sae_point(n)[0], 0), 1 + i, n) for i, n in enumerate(self.sae_acts)]
        return [n for *_, n in sorted(keyed)]

    def __getitem__(self, key):
        if isinstance(key, str) and key in self.sae_acts:
            return self.sae_acts[key]
        return super().__getitem__(key)

    def __len__(self) -> int:
        return super().__len__() + len(self.sae_acts)

    def remove_batch_dim(self) -> "SAEActivationCache":
        """Drop a batch axis of size 1 (in place, returns self, as TransformerLens)."""
        if self.has_batch_dim:
            self.sae_acts = {k: v[0] for k, v in self.sae_acts.items()}
        super().remove_batch_dim()
        return self


jax.tree_util.register_dataclass(
    SAEActivationCache, data_fields=("stacked", "outer", "params", "sae_acts"),
    meta_fields=("cfg", "names", "layers", "has_batch_dim", "tokenizer"))
