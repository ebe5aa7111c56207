"""TransformerLens's hook-point API on the facade: `model.hook_dict`, `model.blocks[0].attn.hook_z
.add_hook(f)`, permanent hooks, `model.hooks(...)`.

jtlens has no hook modules: a hook point is a name the forward calls back at. `HookPointHandle`
stands in for TransformerLens's `HookPoint` module so code that registers functions on it keeps
working; the functions are kept on the model (`HookRegistry`) and run at every later call, as in
TransformerLens. Backward hooks have no equivalent: gradients come from `jax.grad`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable, Optional, Sequence

from jtlens.core.hooks import HookPoint, Hooks  # noqa: F401  (TransformerLens's import path for
# the hook-function argument's type; see hooks.HookPoint)
from jtlens.core.hook_catalogue import hook_catalogue

BWD_HOOKS_ERROR = (
    "backward hooks do not exist in jtlens: gradients come from jax.grad. For the gradient of a "
    "metric at a hook, use jtlens.grads, e.g. "
    "`grads = jtlens.grads.grad_wrt(model, tokens, metric, ['blocks.0.attn.hook_z'])`")


def _check_dir(dir: str) -> None:
    if dir == "bwd":
        raise NotImplementedError(BWD_HOOKS_ERROR)
    if dir not in ("fwd", "both"):
        raise ValueError(f"dir={dir!r}: hooks run on the forward pass ('fwd')")


@dataclasses.dataclass
class _Registered:
    name: str              # a concrete hook name
    fn: Callable
    permanent: bool
    level: Optional[int]   # the `model.hooks()` nesting level that added it (None: add_hook)


class HookPointHandle:
    """A hook point by name: `add_hook`, `remove_hooks`, `fwd_hooks`, `ctx`, `layer()`.

    Calling it returns its input (a TransformerLens HookPoint is an identity module).
    """

    def __init__(self, model: "HookRegistry", name: str):
        self._model, self.name = model, name

    def add_hook(self, hook: Callable, dir: str = "fwd", is_permanent: bool = False,
                 level: Optional[int] = None, prepend: bool = False) -> None:
        self._model.add_hook(self.name, hook, dir, is_permanent, level, prepend)

    def add_perma_hook(self, hook: Callable, dir: str = "fwd") -> None:
        self.add_hook(hook, dir, is_permanent=True)

    def remove_hooks(self, dir: str = "fwd", including_permanent: bool = False,
                     level: Optional[int] = None) -> None:
        self._model._remove(lambda r: r.name == self.name, including_permanent, level)

    @property
    def fwd_hooks(self) -> list[Callable]:
        """The functions registered here, in the order they run."""
        return [r.fn for r in self._model._registered if r.name == self.name]

    @property
    def ctx(self) -> dict:
        """A dict that persists across runs (cleared by `reset_hooks(clear_contexts=True)`)."""
        return self._model._contexts.setdefault(self.name, {})

    def clear_context(self) -> None:
        self._model._contexts.pop(self.name, None)

    def layer(self) -> int:
        parts = self.name.split(".")
        if parts[0] != "blocks":
            raise ValueError(f"{self.name} is not inside a block, so it has no layer")
        return int(parts[1])

    def __call__(self, x):
        return x

    def __repr__(self) -> str:
        return f"HookPointHandle({self.name!r})"


# Hook points TransformerLens's add_hook refuses unless their flag is set (`check_hooks_to_add`).
_FLAGGED_HOOKS = ((("attn.hook_result",), "use_attn_result"),
                  (("hook_q_input", "hook_k_input", "hook_v_input"), "use_split_qkv_input"),
                  (("mlp_in",), "use_hook_mlp_in"), (("attn_in",), "use_attn_in"))


class HookNotEnabledError(ValueError, AssertionError):
    """A hook function added at a hook point whose use_* flag is off (an AssertionError in
    TransformerLens)."""


def _disabled_by(cfg, name: str) -> Optional[str]:
    """The use_* flag that is off and keeps hook point `name` out of the forward, or None."""
    for suffixes, flag in _FLAGGED_HOOKS:
        if name.endswith(suffixes) and not getattr(cfg, flag):
            return flag
    return None


def _check_enabled(cfg, name: str) -> None:
    flag = _disabled_by(cfg, name)
    if flag is not None:
        raise HookNotEnabledError(
            f"Cannot add hook {name} if {flag} is False (as in TransformerLens): call "
            f"model.set_{flag}({True}) first, or edit it through jtlens.Hooks, which "
            f"computes it on demand")


def _running(predicate: Callable, cfg) -> Callable:
    return lambda name: _disabled_by(cfg, name) is None and predicate(name)


class HookRegistry:
    """Mixin for the facade: persistent hook functions and TransformerLens's hook-point API.

    Needs `self.cfg`. Registered functions run on concrete activations at every call until
    removed (the facade decides how: see `host_hooks`); permanent ones survive `reset_hooks()`
    unless `including_permanent=True`.
    """

    _registered: list
    _contexts: dict
    _context_level: int

    def _init_hook_registry(self) -> None:
        self._registered, self._contexts, self._context_level = [], {}, 0
        self._hook_point_cache: tuple = (None, {})

    @property
    def hook_dict(self) -> dict[str, HookPointHandle]:
        """Every hook point of this model (optional ones included, as TransformerLens builds them
        all) -> its handle."""
        cfg, points = self._hook_point_cache
        if cfg != self.cfg:
            points = {n: HookPointHandle(self, n) for n in hook_catalogue(self.cfg).names(optional=True)}
            self._hook_point_cache = (self.cfg, points)
        return points

    def hook_points(self) -> list[HookPointHandle]:
        return list(self.hook_dict.values())

    def add_hook(self, name, hook: Callable, dir: str = "fwd", is_permanent: bool = False,
                 level: Optional[int] = None, prepend: bool = False) -> None:
        """Run `hook(act, hook_point) -> act | None` at hook `name` (a name, alias or a predicate
        on names) on every later call, until `reset_hooks` (or forever, if permanent)."""
        _check_dir(dir)
        if callable(name) and not isinstance(name, str):
            names = [n for n in self.hook_dict if name(n)]
        else:
            names = hook_catalogue(self.cfg).select(name)
        for n in names:
            _check_enabled(self.cfg, n)
        new = [_Registered(n, self._with_context(n, hook), is_permanent, level) for n in names]
        self._registered = new + self._registered if prepend else self._registered + new

    def add_perma_hook(self, name, hook: Callable, dir: str = "fwd") -> None:
        self.add_hook(name, hook, dir, is_permanent=True)

    def _with_context(self, name: str, hook: Callable) -> Callable:
        """The hook with `hook_point.ctx` bound to this model's persistent dict for `name`."""
        def run(act, hook_point):
            hook_point.ctx = self._contexts.setdefault(name, {})
            return hook(act, hook_point)

        run.__wrapped__ = hook
        return run

    def _remove(self, which: Callable, including_permanent: bool, level: Optional[int]) -> None:
        self._registered = [
            r for r in self._registered
            if not (which(r) and (including_permanent or not r.permanent)
                    and (level is None or r.level == level))]

    def remove_all_hook_fns(self, direction: str = "both", including_permanent: bool = False,
                            level: Optional[int] = None) -> None:
        self._remove(lambda r: True, including_permanent, level)

    def clear_contexts(self) -> None:
        self._contexts.clear()

    def reset_hooks(self, clear_contexts: bool = True, direction: str = "both",
                    including_permanent: bool = False, level: Optional[int] = None) -> None:
        """Remove the hooks (permanent ones only with `including_permanent=True`)."""
        if clear_contexts:
            self.clear_contexts()
        self.remove_all_hook_fns(direction, including_permanent, level)

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: Sequence = (), bwd_hooks: Sequence = (),
              reset_hooks_end: bool = True, clear_contexts: bool = False):
        """Context manager: `fwd_hooks=[(name_or_predicate, fn)]` apply to every call inside."""
        if bwd_hooks:
            raise NotImplementedError(BWD_HOOKS_ERROR)
        self._context_level += 1
        level = self._context_level
        try:
            for name, fn in fwd_hooks:
                if callable(name) and not isinstance(name, str):
                    # As TransformerLens's `hooks()`: a predicate reaches only the hook points this
                    # forward runs (not those whose use_* flag is off), and raises for none.
                    name = _running(name, self.cfg)
                self.add_hook(name, fn, level=level)
            yield self
        finally:
            if reset_hooks_end:
                self.reset_hooks(clear_contexts, level=level)
            self._context_level -= 1

    def _persistent_hooks(self) -> Optional[Hooks]:
        """The registered functions as a `Hooks`, or None when there are none."""
        if not self._registered:
            return None
        return Hooks(fns=[(r.name, r.fn) for r in self._registered])

    def __getattr__(self, name: str) -> Any:
        # `model.hook_embed`: outer hook points as attributes (only reached when normal lookup fails)
        if name.startswith("hook_") and name in self.hook_dict:
            return self.hook_dict[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")
