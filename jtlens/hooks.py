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
import re
from typing import Any, Callable, Mapping, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from jtlens.config import Config

ALL_LAYERS = "*"
_BLOCK_NAME = re.compile(r"^blocks\.(\d+|\*)\.(.+)$")


# ----------------------------------------------------------------------------- catalogue

def block_hook_templates(cfg: Config, optional: bool = False) -> list[str]:
    """Per-layer hook templates for `cfg`, in execution order.

    `optional=True` includes the hooks TransformerLens only has behind `use_*` flags
    (hook_result, hook_attn_in, hook_q/k/v_input, hook_mlp_in), whatever the flags say.
    """
    if cfg.post_ln:
        return _post_ln_block_templates(cfg, optional)
    ln = cfg.normalization_type is not None
    t = ["hook_resid_pre"]
    if optional or cfg.use_attn_in:
        t.append("hook_attn_in")
    if optional or cfg.use_split_qkv_input:
        t += ["hook_q_input", "hook_k_input", "hook_v_input"]
    if ln:
        t += ["ln1.hook_scale", "ln1.hook_normalized"]
    t += ["attn.hook_q", "attn.hook_k", "attn.hook_v"]
    if cfg.use_qk_norm:
        t += ["attn.q_norm.hook_scale", "attn.q_norm.hook_normalized",
              "attn.k_norm.hook_scale", "attn.k_norm.hook_normalized"]
    if cfg.positional_embedding_type == "rotary":
        t += ["attn.hook_rot_q", "attn.hook_rot_k"]
    t += ["attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z"]
    if optional or cfg.use_attn_result:
        t.append("attn.hook_result")
    if cfg.use_normalization_before_and_after:
        t += ["ln1_post.hook_scale", "ln1_post.hook_normalized"]
    t.append("hook_attn_out")
    if not cfg.attn_only:
        if not cfg.parallel_attn_mlp:
            t.append("hook_resid_mid")
        if optional or cfg.use_hook_mlp_in:
            t.append("hook_mlp_in")
        if ln:
            t += ["ln2.hook_scale", "ln2.hook_normalized"]
        t.append("mlp.hook_pre")
        if cfg.gated_mlp:
            t.append("mlp.hook_pre_linear")
        t.append("mlp.hook_post")
        if cfg.use_normalization_before_and_after:
            t += ["ln2_post.hook_scale", "ln2_post.hook_normalized"]
        t.append("hook_mlp_out")
    t.append("hook_resid_post")
    return t


def _post_ln_block_templates(cfg: Config, optional: bool) -> list[str]:
    """TransformerLens's BertBlock hooks: ln1 normalises resid_mid, ln2 normalises resid_post."""
    t = ["hook_resid_pre"]
    if optional or cfg.use_split_qkv_input:
        t += ["hook_q_input", "hook_k_input", "hook_v_input"]
    t += ["attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_attn_scores",
          "attn.hook_pattern", "attn.hook_z"]
    if optional or cfg.use_attn_result:
        t.append("attn.hook_result")
    t += ["hook_attn_out", "hook_resid_mid"]
    if optional or cfg.use_hook_mlp_in:
        t.append("hook_mlp_in")
    t += ["ln1.hook_scale", "ln1.hook_normalized", "mlp.hook_pre"]
    if cfg.gated_mlp:
        t.append("mlp.hook_pre_linear")
    return t + ["mlp.hook_post", "hook_mlp_out", "hook_resid_post", "ln2.hook_scale",
                "ln2.hook_normalized", "hook_normalized_resid_post"]


def _encoder_outer_hook_names(cfg: Config) -> tuple[list[str], list[str]]:
    """TransformerLens's HookedEncoder: the embedding hooks sit under `embed.`."""
    pre = ["embed.hook_embed", "embed.hook_pos_embed"]
    if cfg.n_token_types:
        pre.append("embed.hook_token_type_embed")
    pre += ["embed.ln.hook_scale", "embed.ln.hook_normalized", "hook_full_embed"]
    post = ["mlm_head.ln.hook_scale", "mlm_head.ln.hook_normalized", "unembed.hook_in",
            "unembed.hook_out"] if cfg.mlm_head else []
    return pre, post


def outer_hook_names(cfg: Config) -> tuple[list[str], list[str]]:
    """Hook points before the blocks and after them."""
    if cfg.post_ln:
        return _encoder_outer_hook_names(cfg)
    pre = (["hook_tokens"] if cfg.use_hook_tokens else []) + ["hook_embed"]
    if cfg.positional_embedding_type == "standard":
        pre.append("hook_pos_embed")
    post = ["ln_final.hook_scale", "ln_final.hook_normalized"] if cfg.final_norm_type else []
    post += ["unembed.hook_in", "unembed.hook_out"]
    return pre, post


def hook_names(cfg: Config, optional: bool = False) -> list[str]:
    """Every concrete hook name of `cfg`, in execution order (what a full cache holds)."""
    pre, post = outer_hook_names(cfg)
    blocks = [f"blocks.{l}.{t}" for l in range(cfg.n_layers)
              for t in block_hook_templates(cfg, optional)]
    return pre + blocks + post


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


def canonical_name(name: NameLike, cfg: Config) -> str:
    """A TransformerLens hook name from any accepted spelling.

    Accepts full names, `blocks.*.<template>`, `get_act_name` tuples (`("pattern", 3)`,
    `("scale", 2, "ln1")`) and short aliases; a short alias without a layer (`"resid_pre"`)
    means every layer. Negative layers count from the end.
    """
    if isinstance(name, tuple):
        base, *rest = name
        layer = rest[0] if rest else None
        layer_type = rest[1] if len(rest) > 1 else None
        if isinstance(layer, int) and layer < 0:
            layer += cfg.n_layers
        return canonical_name(get_act_name(base, layer, layer_type), cfg)
    if not isinstance(name, str):
        raise TypeError(f"hook names are strings or (name, layer) tuples, got {name!r}")
    full = get_act_name(name)
    if cfg.post_ln and f"embed.{full}" in outer_hook_names(cfg)[0]:
        full = f"embed.{full}"  # get_act_name("embed") -> hook_embed; an encoder's is embed.hook_embed
    if full.startswith("hook_") and full not in outer_hook_names(cfg)[0] \
            and full[len("hook_"):] not in ("embed", "pos_embed", "tokens"):
        full = f"blocks.*.{full}"
    if not full.startswith(("blocks.", "hook_", "ln_final.", "unembed.", "embed.", "mlm_head.")):
        # e.g. "attn.hook_z" / "mlp.hook_post": a template without its layer
        full = f"blocks.*.{full}"
    m = _BLOCK_NAME.match(full)
    if m and m.group(1) != ALL_LAYERS and int(m.group(1)) >= cfg.n_layers:
        raise ValueError(f"hook {full!r}: layer {m.group(1)} is out of range for a model with "
                         f"{cfg.n_layers} layers")
    return full


def split_name(full: str) -> tuple[str, Union[int, str, None]]:
    """`blocks.3.attn.hook_z` -> (`attn.hook_z`, 3); `blocks.*.x` -> (`x`, '*'); outer -> (name, None)."""
    m = _BLOCK_NAME.match(full)
    if m is None:
        return full, None
    layer = m.group(1)
    return m.group(2), (ALL_LAYERS if layer == ALL_LAYERS else int(layer))


def unknown_hook_error(name: Any, cfg: Config) -> ValueError:
    valid = hook_names(cfg, optional=True)
    valid_templates = [f"blocks.*.{t}" for t in block_hook_templates(cfg, optional=True)]
    near = difflib.get_close_matches(str(name), valid + valid_templates, n=5, cutoff=0.4)
    hint = f" Nearest valid names: {near}." if near else ""
    return ValueError(f"Unknown hook name {name!r} for this model.{hint} "
                      f"(jtlens.hook_names(cfg) lists them all.)")


def resolve(name: NameLike, cfg: Config) -> tuple[str, Union[int, str, None]]:
    """Validate a hook name for `cfg` and split it into (template, layer)."""
    try:
        full = canonical_name(name, cfg)
    except TypeError:
        raise unknown_hook_error(name, cfg) from None
    template, layer = split_name(full)
    if layer is None:
        pre, post = outer_hook_names(cfg)
        ok = template in pre + post
    else:
        ok = template in block_hook_templates(cfg, optional=True)
    if not ok:
        raise unknown_hook_error(name, cfg)
    return template, layer


def _is_act_key(x) -> bool:
    """A `get_act_name`-style key such as ("pattern", 3) or ("scale", 2, "ln1")."""
    return (isinstance(x, tuple) and 2 <= len(x) <= 3 and isinstance(x[0], str)
            and (x[1] is None or isinstance(x[1], int)))


def select_names(selection: Any, cfg: Config) -> list[str]:
    """Expand a capture selection into concrete hook names, in execution order.

    `True` = everything (TransformerLens's `names_filter=None`); a string or list of names,
    `blocks.*` forms, aliases or glob patterns; or a predicate on the full name.
    """
    if selection is None or selection is False:
        return []
    everything = hook_names(cfg)
    if selection is True:
        return everything
    if callable(selection):
        return [n for n in hook_names(cfg, optional=True) if selection(n)]
    if isinstance(selection, str) or _is_act_key(selection):
        selection = [selection]
    if not isinstance(selection, (list, tuple, set, frozenset)):
        raise TypeError(f"names_filter / capture={selection!r}: give True, a hook name, a list of "
                        f"names or a predicate on the name")
    wanted: set[str] = set()
    for item in selection:
        if isinstance(item, str) and any(c in item for c in "?[") or (
                isinstance(item, str) and "*" in item and not _BLOCK_NAME.match(item)):
            hits = fnmatch.filter(everything, item)
            if not hits:
                raise unknown_hook_error(item, cfg)
            wanted.update(hits)
            continue
        template, layer = resolve(item, cfg)
        if layer == ALL_LAYERS:
            wanted.update(f"blocks.{l}.{template}" for l in range(cfg.n_layers))
        elif layer is None:
            wanted.add(template)
        else:
            wanted.add(f"blocks.{layer}.{template}")
    return [n for n in hook_names(cfg, optional=True) if n in wanted]


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


@jax.tree_util.register_pytree_node_class
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

    At one hook point the order is: patch, add, fns, then capture.
    """

    capture: Any = None
    patch: Mapping[Any, tuple] = dataclasses.field(default_factory=dict)
    add: Mapping[Any, Any] = dataclasses.field(default_factory=dict)
    fns: Any = ()

    def __post_init__(self):
        capture = self.capture
        if isinstance(capture, list):
            capture = tuple(capture)
        object.__setattr__(self, "capture", capture)
        fns = self.fns.items() if isinstance(self.fns, Mapping) else self.fns
        object.__setattr__(self, "fns", tuple((k, tuple(f) if isinstance(f, (list, tuple)) else (f,))
                                              for k, f in fns))
        patch = {k: (v if isinstance(v, tuple) else (v, None)) for k, v in dict(self.patch).items()}
        object.__setattr__(self, "patch", patch)
        object.__setattr__(self, "add", dict(self.add))

    def tree_flatten(self):
        patch_keys = tuple(self.patch)
        add_keys = tuple(self.add)
        children = (tuple(self.patch[k] for k in patch_keys), tuple(self.add[k] for k in add_keys))
        return children, (self.capture, self.fns, patch_keys, add_keys)

    @classmethod
    def tree_unflatten(cls, aux, children):
        capture, fns, patch_keys, add_keys = aux
        obj = object.__new__(cls)
        object.__setattr__(obj, "capture", capture)
        object.__setattr__(obj, "fns", fns)
        object.__setattr__(obj, "patch", dict(zip(patch_keys, children[0])))
        object.__setattr__(obj, "add", dict(zip(add_keys, children[1])))
        return obj


# ----------------------------------------------------------------------------- runtime

@dataclasses.dataclass
class _Edit:
    kind: str          # "patch" | "add" | "fn"
    name: str          # full name as given (for errors and HookPoint.name)
    layer: Any         # None (outer), int, or ALL_LAYERS
    payload: Any       # (value, mask) | delta | tuple of fns


class HookRunner:
    """Applies a `Hooks` inside the forward. Built at trace time; all decisions are static."""

    def __init__(self, hooks: Optional[Hooks], cfg: Config):
        self.cfg = cfg
        self.edits: dict[str, list[_Edit]] = {}
        self.captured: dict[str, set] = {}  # template -> layers (None for outer hooks)
        if hooks is None:
            return
        for full in select_names(hooks.capture, cfg):
            template, layer = split_name(full)
            self.captured.setdefault(template, set()).add(layer)
        for key, pv in hooks.patch.items():
            self._add_edit("patch", key, pv)
        for key, delta in hooks.add.items():
            self._add_edit("add", key, delta)
        for key, fns in hooks.fns:
            if callable(key) and not isinstance(key, str):
                for full in select_names(key, cfg):
                    self._add_edit("fn", full, fns)
            else:
                self._add_edit("fn", key, fns)

    def _add_edit(self, kind, key, payload):
        template, layer = resolve(key, self.cfg)
        name = key if isinstance(key, str) else canonical_name(key, self.cfg)
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
        if e.layer == ALL_LAYERS:
            if x.ndim == 0 or x.shape[0] not in (1, self.cfg.n_layers):
                raise ValueError(
                    f"hook {e.name!r}: the {what} for a blocks.* hook needs a leading layer axis "
                    f"of size {self.cfg.n_layers}; got shape {tuple(x.shape)} for an activation "
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
                out = f(a, hp)
                if out is not None:
                    if not isinstance(out, (jax.Array, np.ndarray)):
                        raise TypeError(f"hook function at {hp.name!r} returned a "
                                        f"{type(out).__name__}; return an array of the "
                                        f"activation's shape {tuple(a.shape)}, or None")
                    if out.shape != a.shape:
                        raise ValueError(f"hook function at {hp.name!r} returned shape "
                                         f"{tuple(out.shape)}; the activation has shape "
                                         f"{tuple(a.shape)}")
                    a = out.astype(a.dtype)
            return a

        if e.layer is None:
            return run(act, HookPoint(template))
        if e.layer == ALL_LAYERS:
            return run(act, HookPoint(f"blocks.*.{template}", layer))
        hp = HookPoint(f"blocks.{e.layer}.{template}", e.layer)
        if isinstance(layer, int):  # unrolled run: the layer is static and already matched
            return run(act, hp)
        return jax.lax.cond(layer == e.layer, lambda a: run(a, hp), lambda a: a, act)
