"""Hooks as data: which activations to capture, patch, shift or rewrite during a forward.

A hook point is named as in TransformerLens (`blocks.3.attn.hook_z`, `hook_embed`,
`ln_final.hook_scale`). Inside the forward, per-layer hook points are addressed by a
*template* (`attn.hook_z`) plus a layer; `blocks.*.attn.hook_z` addresses every layer at once
with one array whose leading axis is the layer.

`Hooks` is a pytree: patch values, masks and additive deltas are leaves (so a sweep is a
`vmap` over them and a gradient is `jax.grad` with respect to a zero delta), while the names,
the capture selection and the Python functions are static.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import functools
import re
from typing import Any, Callable, Mapping, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np


ALL_LAYERS = "*"
_BLOCK_NAME = re.compile(r"^blocks\.(-?\d+|\*)\.(.+)$")
# A tuple key's negative layer, kept until a model says how many layers there are:
# ("resid_pre", -1) -> "blocks.end-1.hook_resid_pre".
_FROM_END = re.compile(r"^blocks\.end-(\d+)\.(.+)$")


# ----------------------------------------------------------------------------- names

_ACT_ALIASES = {"attn": "pattern", "attn_logits": "attn_scores", "key": "k", "query": "q",
                "value": "v", "mlp_pre": "pre", "mlp_mid": "mid", "mlp_post": "post"}
_LAYER_TYPE_ALIASES = {"a": "attn", "m": "mlp", "b": "", "block": "", "blocks": "",
                       "attention": "attn"}


def get_act_name(name: str, layer: Optional[int] = None, layer_type: Optional[str] = None) -> str:
    """TransformerLens's `utils.get_act_name`: `("pattern", 3)` -> `blocks.3.attn.hook_pattern`.

    Full names pass through; `"k6"` expands like TransformerLens does.
    """
    if ("." in name or name.startswith("hook_")) and layer is None and layer_type is None:
        return name
    m = re.match(r"([a-z]+)(\d+)([a-z]?.*)", name)
    if m is not None:
        name, layer_s, layer_type = m.groups()
        layer = int(layer_s)
    name = _ACT_ALIASES.get(name, name)
    full = f"blocks.{layer}." if layer is not None else ""
    if name in ("k", "v", "q", "z", "rot_k", "rot_q", "result", "pattern", "attn_scores"):
        layer_type = "attn"
    elif name in ("pre", "post", "mid", "pre_linear"):
        layer_type = "mlp"
    elif layer_type in _LAYER_TYPE_ALIASES:
        layer_type = _LAYER_TYPE_ALIASES[layer_type]
    if layer_type:
        full += f"{layer_type}."
    full += f"hook_{name}"
    if name in ("scale", "normalized") and layer is None:
        full = f"ln_final.{full}"
    return full


NameLike = Union[str, tuple]


def _is_act_key(x) -> bool:
    """A `get_act_name`-style key such as ("pattern", 3) or ("scale", 2, "ln1")."""
    return (isinstance(x, tuple) and 2 <= len(x) <= 3 and isinstance(x[0], str)
            and (x[1] is None or isinstance(x[1], int)))


def split_name(full: str) -> tuple[str, Union[int, str, None]]:
    """`blocks.3.attn.hook_z` -> (`attn.hook_z`, 3); `blocks.*.x` -> (`x`, '*'); outer -> (name, None)."""
    m = _BLOCK_NAME.match(full)
    if m is None:
        return full, None
    layer = m.group(1)
    return m.group(2), (ALL_LAYERS if layer == ALL_LAYERS else int(layer))


@dataclasses.dataclass(frozen=True)
class HookNames:
    """The hook points of one model, in execution order: what names resolve against.

    Built by `hook_catalogue(cfg)` (core/hook_catalogue.py), which reads them off the forward, so a
    hook point exists exactly where the forward fires one.

    Attributes:
      pre / post: hook names before and after the blocks (`hook_embed`, `ln_final.hook_scale`).
      templates: per-layer templates (`attn.hook_z`) a capture-everything run holds.
      optional: every per-layer template, including those TransformerLens only has behind
        `use_*` flags (hook_result, hook_attn_in, hook_q/k/v_input, hook_mlp_in).
      n_layers: the number of blocks.
    """

    pre: tuple
    templates: tuple
    optional: tuple
    post: tuple
    n_layers: int

    def names(self, optional: bool = False) -> list[str]:
        """Every concrete hook name (what a full cache holds), in execution order."""
        templates = self.optional if optional else self.templates
        return [*self.pre, *(f"blocks.{l}.{t}" for l in range(self.n_layers) for t in templates),
                *self.post]

    def canonical(self, name: NameLike) -> str:
        """A TransformerLens hook name from any accepted spelling.

        Accepts full names, `blocks.*.<template>`, `get_act_name` tuples (`("pattern", 3)`,
        `("scale", 2, "ln1")`) and short aliases; a short alias without a layer (`"resid_pre"`)
        means every layer. Negative layers count from the end in tuples only: a string
        `blocks.-1.<name>` is refused, as TransformerLens has no such hook point.
        """
        if isinstance(name, tuple):
            base, *rest = name
            layer = rest[0] if rest else None
            layer_type = rest[1] if len(rest) > 1 else None
            if isinstance(layer, int) and layer < 0:
                layer += self.n_layers
            return self.canonical(get_act_name(base, layer, layer_type))
        if not isinstance(name, str):
            raise TypeError(f"hook names are strings or (name, layer) tuples, got {name!r}")
        full = get_act_name(name)
        if f"embed.{full}" in self.pre:
            full = f"embed.{full}"  # get_act_name("embed") -> hook_embed; an encoder's is embed.hook_embed
        if full.startswith("hook_") and full not in self.pre \
                and full[len("hook_"):] not in ("embed", "pos_embed", "tokens"):
            full = f"blocks.*.{full}"
        if not full.startswith(("blocks.", "hook_", "ln_final.", "unembed.", "embed.", "mlm_head.")):
            # e.g. "attn.hook_z" / "mlp.hook_post": a template without its layer
            full = f"blocks.*.{full}"
        end = _FROM_END.match(full)
        if end:
            back = int(end.group(1))
            if not 1 <= back <= self.n_layers:
                raise ValueError(f"hook {full!r}: layer -{back} is out of range for a model with "
                                 f"{self.n_layers} layers")
            full = f"blocks.{self.n_layers - back}.{end.group(2)}"
        m = _BLOCK_NAME.match(full)
        if m and m.group(1) != ALL_LAYERS:
            layer = int(m.group(1))
            if layer < 0:  # TransformerLens has no such hook point; only tuple keys count back
                raise ValueError(f"hook {full!r}: a hook name's layer must be 0..{self.n_layers - 1}"
                                 f" (TransformerLens has no blocks.{layer}); write "
                                 f"blocks.{layer % self.n_layers}.{m.group(2)} or "
                                 f"('{m.group(2).split('hook_')[-1]}', {layer})")
            if layer >= self.n_layers:
                raise ValueError(f"hook {full!r}: layer {layer} is out of range for a model with "
                                 f"{self.n_layers} layers")
            full = f"blocks.{layer % self.n_layers}.{m.group(2)}"
        return full

    def unknown(self, name: Any) -> ValueError:
        """The error for a name this model does not have, listing the nearest valid ones."""
        valid = self.names(optional=True) + [f"blocks.*.{t}" for t in self.optional]
        near = difflib.get_close_matches(str(name), valid, n=5, cutoff=0.4)
        hint = f" Nearest valid names: {near}." if near else ""
        return ValueError(f"Unknown hook name {name!r} for this model.{hint} "
                          f"(jtlens.hook_names(cfg) lists them all.)")

    def resolve(self, name: NameLike) -> tuple[str, Union[int, str, None]]:
        """Validate a hook name and split it into (template, layer)."""
        try:
            full = self.canonical(name)
        except TypeError:
            raise self.unknown(name) from None
        template, layer = split_name(full)
        ok = template in (self.pre + self.post if layer is None else self.optional)
        if not ok:
            raise self.unknown(name)
        return template, layer

    def one(self, name: NameLike, what: str) -> str:
        """The single concrete hook `name` selects; `what` names the caller in the error."""
        names = self.select(name)
        if len(names) != 1:
            raise ValueError(f"{what} takes one concrete hook (one layer's, e.g. "
                             f"{self.names()[1]!r}); {name!r} selects {len(names)}")
        return names[0]

    def select(self, selection: Any) -> list[str]:
        """Expand a capture selection into concrete hook names, in execution order.

        `True` = everything (TransformerLens's `names_filter=None`); a string or list of names,
        `blocks.*` forms, aliases or glob patterns; or a predicate on the full name.
        """
        if selection is None or selection is False:
            return []
        everything = self.names()
        if selection is True:
            return everything
        if callable(selection):
            return [n for n in self.names(optional=True) if selection(n)]
        if isinstance(selection, str) or _is_act_key(selection):
            selection = [selection]
        if not isinstance(selection, (list, tuple, set, frozenset)):
            raise TypeError(f"names_filter / capture={selection!r}: give True, a hook name, a list "
                            f"of names or a predicate on the name")
        wanted: set[str] = set()
        for item in selection:
            if isinstance(item, str) and any(c in item for c in "?[") or (
                    isinstance(item, str) and "*" in item and not _BLOCK_NAME.match(item)):
                hits = fnmatch.filter(everything, item)
                if not hits:
                    raise self.unknown(item)
                wanted.update(hits)
                continue
            template, layer = self.resolve(item)
            if layer == ALL_LAYERS:
                wanted.update(f"blocks.{l}.{template}" for l in range(self.n_layers))
            elif layer is None:
                wanted.add(template)
            else:
                wanted.add(f"blocks.{layer}.{template}")
        return [n for n in self.names(optional=True) if n in wanted]


# ----------------------------------------------------------------------------- the pytree

class HookPoint:
    """What a hook function sees as its second argument (TransformerLens's HookPoint subset).

    `name` is the full hook name; `layer()` is the layer as a Python int for a named layer,
    or a traced scalar for a `blocks.*` hook; `ctx` is a dict for the function's own use.
    """

    def __init__(self, name: str, layer: Any = None):
        self.name = name
        self._layer = layer
        self.ctx: dict = {}

    def layer(self):
        if self._layer is None:
            raise ValueError(f"{self.name} is not inside a block, so it has no layer")
        return self._layer

    def __repr__(self):
        return f"HookPoint({self.name!r})"


HookFn = Callable[[jax.Array, HookPoint], Optional[jax.Array]]


def _call_hook_fn(f: HookFn, act, hp: HookPoint):
    """f(act, hp), turning the TransformerLens habit of editing the activation in place into an
    error that shows the JAX idiom (JAX arrays are immutable)."""
    try:
        return f(act, hp)
    except TypeError as err:
        if "item assignment" not in str(err):
            raise
        raise TypeError(
            f"hook function at {hp.name!r} assigned into the activation in place "
            f"(`act[...] = value`), but JAX arrays are immutable: return an edited copy instead, "
            f"e.g. `return act.at[:, :, 0].set(0)` for `act[:, :, 0] = 0`") from err


def apply_hook_fn(f: HookFn, act, hp: HookPoint):
    """`f(act, hp)`'s new activation (`act` itself when f returns None), checked to be a real
    array of the activation's shape and cast to its dtype."""
    out = _call_hook_fn(f, act, hp)
    if out is None:
        return act
    if not isinstance(out, (jax.Array, np.ndarray)):
        raise TypeError(f"hook function at {hp.name!r} returned a {type(out).__name__}; return "
                        f"an array of the activation's shape {tuple(act.shape)}, or None")
    if out.shape != act.shape:
        raise ValueError(f"hook function at {hp.name!r} returned shape {tuple(out.shape)}; the "
                         f"activation has shape {tuple(act.shape)}")
    if jnp.iscomplexobj(out):
        raise TypeError(f"hook function at {hp.name!r} returned complex values ({out.dtype}); "
                        f"activations are real, return `.real`")
    return out.astype(act.dtype)


def _patch_key(key: Any) -> str:
    """A patch/add key as a string: `("pattern", 3)` -> `blocks.3.attn.hook_pattern`; a negative
    layer counts from the end once the model is known (`("pattern", -1)` ->
    `blocks.end-1.attn.hook_pattern`). Strings keep the user's spelling."""
    if _is_act_key(key):
        base, layer, *layer_type = key
        if isinstance(layer, int) and layer < 0:
            return get_act_name(base, 0, *layer_type).replace("blocks.0.", f"blocks.end{layer}.", 1)
        return get_act_name(base, layer, *layer_type)
    if not isinstance(key, str):
        raise TypeError(f"hook names are strings or (name, layer) tuples, got {key!r}")
    return key


@functools.partial(jax.tree_util.register_dataclass, data_fields=("patch", "add"),
                   meta_fields=("capture", "fns"))
@dataclasses.dataclass(frozen=True)
class Hooks:
    """Interventions and captures for one forward.

    Args:
      capture: which activations to return: `True` (all), hook names / `blocks.*` forms /
        aliases / glob patterns, or a predicate on the full name. Static.
      patch: name -> `(value, mask)`; the hook sets `act = where(mask, value, act)`. Both
        broadcast to the activation (`mask=None` means everywhere). For `blocks.*` names both
        carry a leading layer axis. Leaves: vmap over them for sweeps.
      add: name -> `delta`; `act = act + delta` (steering vectors; gradients w.r.t. a zero
        delta are gradients w.r.t. the activation). Leaves.
      fns: name -> `f(act, hook) -> act | None`, traced under jit (the `run_with_hooks`
        escape hatch). A list of functions applies them in order. Static.

    At one hook point the order is: patch, add, fns, then capture. `patch` and `add` are keyed
    by strings (tuple keys are spelled out), so the pytree flattens like any dict.
    """

    capture: Any = None
    patch: Mapping[str, tuple] = dataclasses.field(default_factory=dict)
    add: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    fns: Any = ()

    def __post_init__(self):
        # Runs again on unflatten (with tracers or placeholders as leaves): only keys and
        # containers are normalised here, never the values.
        capture = tuple(self.capture) if isinstance(self.capture, list) else self.capture
        fns = self.fns.items() if isinstance(self.fns, Mapping) else self.fns
        fns = tuple((k, tuple(f) if isinstance(f, (list, tuple)) else (f,)) for k, f in fns)
        patch = {_patch_key(k): (v if isinstance(v, tuple) else (v, None))
                 for k, v in dict(self.patch).items()}
        add = {_patch_key(k): v for k, v in dict(self.add).items()}
        for name, value in (("capture", capture), ("fns", fns), ("patch", patch), ("add", add)):
            object.__setattr__(self, name, value)


# ----------------------------------------------------------------------------- runtime

@dataclasses.dataclass
class _Edit:
    kind: str          # "patch" | "add" | "fn"
    name: str          # full name as given (for errors and HookPoint.name)
    layer: Any         # None (outer), int, or ALL_LAYERS
    payload: Any       # (value, mask) | delta | tuple of fns


class HookRunner:
    """Applies a `Hooks` inside the forward. Built at trace time; all decisions are static."""

    def __init__(self, hooks: Optional[Hooks], names: HookNames):
        self.names = names
        self.edits: dict[str, list[_Edit]] = {}
        self.captured: dict[str, set] = {}  # template -> layers (None for outer hooks)
        if hooks is None:
            return
        for full in names.select(hooks.capture):
            template, layer = split_name(full)
            self.captured.setdefault(template, set()).add(layer)
        for key, pv in hooks.patch.items():
            self._add_edit("patch", key, pv)
        for key, delta in hooks.add.items():
            self._add_edit("add", key, delta)
        for key, fns in hooks.fns:
            if callable(key) and not isinstance(key, str):
                for full in names.select(key):
                    self._add_edit("fn", full, fns)
            else:
                self._add_edit("fn", key, fns)

    def _add_edit(self, kind, key, payload):
        template, layer = self.names.resolve(key)
        name = key if isinstance(key, str) else self.names.canonical(key)
        self.edits.setdefault(template, []).append(_Edit(kind, name, layer, payload))

    @property
    def capturing(self) -> bool:
        return bool(self.captured)

    def wants(self, template: str) -> bool:
        """Whether anything reads or edits this hook point (to skip optional computations)."""
        return template in self.captured or template in self.edits

    def edited(self, template: str) -> bool:
        return template in self.edits

    def __call__(self, template: str, act: jax.Array, record: dict, layer=None) -> jax.Array:
        """Apply the edits registered at `template` (at traced `layer` inside the scan)."""
        for e in self.edits.get(template, ()):
            if not self._static_miss(e, layer):
                act = self._apply(e, template, act, layer)
        if template in self.captured:
            record[template] = act
        return act

    def _apply(self, e: _Edit, template, act, layer):
        if e.kind == "fn":
            return self._apply_fns(e, template, act, layer)
        if e.kind == "patch":
            value, mask = e.payload
            value = self._payload(e, "value", value, act, layer)
            mask = True if mask is None else self._payload(e, "mask", mask, act, layer)
            if mask is not True and mask.dtype != jnp.bool_:
                raise TypeError(f"hook {e.name!r}: patch mask holds {mask.dtype} values; it must be "
                                f"boolean (a blend such as 0.5 is an `add` or a hook function)")
            new = jnp.where(mask, value.astype(act.dtype), act)
        else:
            new = act + self._payload(e, "delta", e.payload, act, layer).astype(act.dtype)
        if e.layer is None or e.layer == ALL_LAYERS or isinstance(layer, int):
            return new
        return jnp.where(layer == e.layer, new, act)

    @staticmethod
    def _static_miss(e: _Edit, layer) -> bool:
        """True when the layer is a Python int (unrolled run) and the edit is for another layer."""
        return isinstance(e.layer, int) and isinstance(layer, int) and layer != e.layer

    def _payload(self, e: _Edit, what, x, act, layer):
        x = jnp.asarray(x)
        if jnp.iscomplexobj(x):  # astype would drop the imaginary part without a word
            raise TypeError(f"hook {e.name!r}: the {what} holds complex values ({x.dtype}); "
                            f"activations are real, so pass its real part (`.real`)")
        if e.layer == ALL_LAYERS:
            if x.ndim == 0 or x.shape[0] not in (1, self.names.n_layers):
                raise ValueError(
                    f"hook {e.name!r}: the {what} for a blocks.* hook needs a leading layer axis "
                    f"of size {self.names.n_layers}; got shape {tuple(x.shape)} for an activation "
                    f"of shape {tuple(act.shape)} per layer")
            x = x[0] if x.shape[0] == 1 else jax.lax.dynamic_index_in_dim(x, layer, keepdims=False)
        try:
            ok = jnp.broadcast_shapes(x.shape, act.shape) == act.shape
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"hook {e.name!r}: {what} of shape {tuple(x.shape)} does not "
                             f"broadcast to the activation's shape {tuple(act.shape)}")
        return x

    def _apply_fns(self, e: _Edit, template, act, layer):
        def run(a, hp):
            for f in e.payload:
                a = apply_hook_fn(f, a, hp)
            return a

        if e.layer is None:
            return run(act, HookPoint(template))
        if e.layer == ALL_LAYERS:
            return run(act, HookPoint(f"blocks.*.{template}", layer))
        hp = HookPoint(f"blocks.{e.layer}.{template}", e.layer)
        if isinstance(layer, int):  # unrolled run: the layer is static and already matched
            return run(act, hp)
        return jax.lax.cond(layer == e.layer, lambda a: run(a, hp), lambda a: a, act)
