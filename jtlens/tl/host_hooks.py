"""Python hook functions called back from a compiled forward, TransformerLens-style.

`run_with_hooks` hook functions expect concrete activations, `hook.layer()` as an int, and a
fresh closure on every call (`functools.partial(ablate, head=h)` in a loop). Tracing them into
the program would recompile per closure; running the model op by op pays a compile per new
operation and Python dispatch per op (measured on SmolLM2: 3.7 s for the first call, 0.9 s
for each later one). Instead each hooked point becomes a `HostSlot`: an `io_callback` in the
compiled forward that calls whichever function the current call registered for it. Slots
compare equal by position, so one compiled program serves every later call that hooks the
same points, whatever the functions are. Hooks along the residual stream run in the forward's
order (each one's output is the next one's input); hooks on parallel branches of one layer
(say `hook_q` and `hook_k`) may run in either order.

    out = call_with_host_hooks(jitted_forward, hooks, params=params, tokens=tokens, cfg=cfg)
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Any, Callable

import jax
from jax.experimental import io_callback

from jtlens.core.hooks import HookPoint, Hooks, apply_hook_fn

# The functions of the call in flight: {slot key: fn}. Callbacks run on XLA's threads, not the
# caller's, so this is module state rather than thread-local: calls with Python hooks from two
# threads at once are not supported. A hook function may itself run the model (nested calls
# save and restore it); a lock would deadlock there, as the callback thread is not the caller.
_ACTIVE: dict = {}


@dataclasses.dataclass(frozen=True)
class HostSlot:
    """Stands for the `index`-th function registered at hook `name`; traced as a callback."""

    name: str
    index: int

    def __call__(self, act: jax.Array, hook: HookPoint) -> jax.Array:
        # Unordered: the activation flows on through the returned value, which orders the hooks
        # along the residual stream; an ordered effect would also make a hook that runs the
        # model wait for the program it is called from.
        call = functools.partial(_dispatch, (self.name, self.index), hook.name, hook._layer)
        return io_callback(call, jax.ShapeDtypeStruct(act.shape, act.dtype), act)


def _dispatch(key, name: str, layer, act: jax.Array):
    """Runs inside the compiled forward: the registered function on the concrete activation.
    An error is kept for the caller (raised once the program returns, with its own type and
    message) and the remaining hooks are skipped."""
    if _ACTIVE.get("error") is not None:
        return act
    try:
        return apply_hook_fn(_ACTIVE[key], act, HookPoint(name, layer))
    except Exception as err:  # noqa: BLE001 - re-raised unchanged by `_calling`
        _ACTIVE["error"] = err
        return act


def _host_slots(hooks: Hooks) -> tuple[Hooks, dict]:
    """(`hooks` with every function replaced by its slot, {slot key: function})."""
    fns, slots = {}, []
    for name, group in hooks.fns:
        if not isinstance(name, str):  # predicates are expanded to names by the registry
            raise TypeError(f"host hooks are keyed by hook names, got {name!r}")
        keyed = []
        for f in group:
            key = (name, sum(k[0] == name for k in fns))
            fns[key] = f
            keyed.append(HostSlot(*key))
        slots.append((name, tuple(keyed)))
    return dataclasses.replace(hooks, fns=tuple(slots)), fns


@contextlib.contextmanager
def _calling(fns: dict):
    """Make `fns` the functions the slots call; yields `run(out) -> out`, which waits for the
    program (the callbacks run while it executes) and raises what a hook function raised."""
    def run(out: Any) -> Any:
        jax.block_until_ready(out)
        if _ACTIVE.get("error") is not None:
            raise _ACTIVE["error"]
        return out

    outer = dict(_ACTIVE)
    _ACTIVE.clear()
    _ACTIVE.update(fns)
    try:
        yield run
    finally:
        _ACTIVE.clear()
        _ACTIVE.update(outer)


def call_with_host_hooks(fn: Callable, hooks: Hooks, **kwargs):
    """`fn(hooks=<slots>, **kwargs)` (a jitted forward) with `hooks`' functions called back."""
    slotted, fns = _host_slots(hooks)
    with _calling(fns) as run:
        return run(fn(hooks=slotted, **kwargs))
