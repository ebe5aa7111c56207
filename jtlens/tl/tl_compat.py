"""The rest of TransformerLens's HookedTransformer surface on the facade: config toggles, module
pieces (`model.embed`, `model.unembed.W_U`, `model.ln_final`), `state_dict()` with
TransformerLens's per-layer names, in-place weight processing, and torch's module methods.

jtlens models are pure functions of (cfg, params): "in place" here means the facade swaps its
params or its frozen Config for new ones. Devices are JAX's (`jax.device_put`); `eval()` /
`train()` / `requires_grad` have nothing to switch (there is no dropout and no autograd state).
"""

from __future__ import annotations

import weakref
from typing import Any, Iterator, Optional

import jax
import jax.numpy as jnp

from jtlens.core import weights as W
from jtlens.core.config import Config
from jtlens.core.params import param_shapes
from jtlens.io.conversions.transformer_lens import flat_state_dict, params_from_state_dict
from jtlens.tl.module_views import ModuleView, top_level_views
from jtlens.tl.weight_processing import ProcessWeights

_PROCESS_DEFAULTS = dict(fold_ln=True, center_writing_weights=True, center_unembed=True,
                         fold_value_biases=True, refactor_factored_attn_matrices=False)
_DEFAULT = object()  # "the model's own setting" (prepend_bos, padding_side); None means it too


def config_with_vocab(cfg, tokenizer):
    """A Config from a Config or a dict of its fields; one without d_vocab takes it from the
    tokenizer (its largest id + 1, and d_vocab_out too when unset), as TransformerLens does."""
    cfg = Config.unwrap(cfg)
    if cfg.d_vocab == -1:
        if tokenizer is None:
            raise ValueError("the config has no d_vocab and there is no tokenizer to infer it "
                             "from: set d_vocab or pass tokenizer=")
        d_vocab = max(tokenizer.get_vocab().values()) + 1
        cfg = cfg.replace(d_vocab=d_vocab, d_vocab_out=d_vocab if cfg.d_vocab_out == -1
                          else cfg.d_vocab_out)
    return cfg


class BoundConfig(Config):
    """What a model's `cfg` attribute holds: its frozen Config (equal to, and hashing as, the
    plain one, so jit takes it as the same static argument), on which `model.cfg.x = value` swaps
    `cfg.replace(x=value)` into the model, as TransformerLens code expects of its config.
    Functional code keeps receiving a frozen, hashable Config; `plain()` is the Config itself."""

    def __setattr__(self, name, value):
        model = self.__dict__.get("_model", lambda: None)()
        if model is None:
            return Config.__setattr__(self, name, value)  # the frozen error, with its fix
        if name not in Config.__dataclass_fields__:
            raise AttributeError(f"Config has no field {name!r} (jtlens.Config's fields follow "
                                 f"HookedTransformerConfig's)")
        new = model.cfg.replace(**{name: value})
        if param_shapes(model.cfg) != param_shapes(new):
            raise ValueError(f"cfg.{name} = {value!r} changes the shapes of the model's weights; "
                             f"build a new model with cfg.replace({name}=...) and its own params")
        model.cfg = new

    def __eq__(self, other):
        if not isinstance(other, Config):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in Config.__dataclass_fields__)

    __hash__ = Config.__hash__

    def __reduce__(self):  # pickled / copied as the plain Config (the model link is a weakref)
        return Config.from_dict, (self.to_dict(),)

    def plain(self) -> Config:
        cfg = object.__new__(Config)
        cfg.__dict__.update({f: getattr(self, f) for f in Config.__dataclass_fields__})
        return cfg

    def replace(self, **changes) -> Config:
        return self.plain().replace(**changes)


def bind_config(cfg: Config, model) -> BoundConfig:
    """`cfg` as the BoundConfig of `model` (no re-validation: it is the same Config)."""
    bound = object.__new__(BoundConfig)
    bound.__dict__.update({f: getattr(cfg, f) for f in Config.__dataclass_fields__})
    bound.__dict__["_model"] = weakref.ref(model)
    return bound


class TransformerLensCompat:
    """Mixin for the facade (needs `self.cfg`, `self.params`, `self._inputs`)."""

    @property
    def cfg(self) -> BoundConfig:
        """The model's Config; `model.cfg.x = value` replaces it with `cfg.replace(x=value)`."""
        return self._cfg

    @cfg.setter
    def cfg(self, value) -> None:
        plain = value.plain() if isinstance(value, BoundConfig) else Config.unwrap(value)
        self._cfg = bind_config(plain, self)

    def set_tokenizer(self, tokenizer, default_padding_side: str = "right") -> None:
        """Use `tokenizer` for text. Padding goes on `default_padding_side` unless a call says
        otherwise or `model.tokenizer.padding_side` is changed afterwards (TransformerLens reads
        the tokenizer's side)."""
        if default_padding_side not in ("left", "right"):
            raise ValueError(f"default_padding_side must be 'left' or 'right', not {default_padding_side!r}")
        self.tokenizer, self.default_padding_side = tokenizer, default_padding_side
        self._tokenizer_side = getattr(tokenizer, "padding_side", None)

    def _padding_side(self) -> str:
        side = getattr(self.tokenizer, "padding_side", None)
        return side if side != self._tokenizer_side and side in ("left", "right") else self.default_padding_side

    # ------------------------------------------------------------------ config toggles
    def _toggle(self, **flag: bool) -> None:
        self.cfg = self.cfg.replace(**flag)

    def set_use_attn_result(self, use_attn_result: bool) -> None:
        """Include attn.hook_result (per-head outputs) in full caches."""
        self._toggle(use_attn_result=use_attn_result)

    def set_use_split_qkv_input(self, use_split_qkv_input: bool) -> None:
        """Give each head its own q/k/v input copy (hook_q_input / hook_k_input / hook_v_input)."""
        self._toggle(use_split_qkv_input=use_split_qkv_input)

    def set_use_hook_mlp_in(self, use_hook_mlp_in: bool) -> None:
        self._toggle(use_hook_mlp_in=use_hook_mlp_in)

    def set_use_attn_in(self, use_attn_in: bool) -> None:
        self._toggle(use_attn_in=use_attn_in)

    # ------------------------------------------------------------------ pieces
    def _piece(self, name: str) -> ModuleView:
        views = top_level_views(self)
        if name not in views:
            raise AttributeError(f"this model has no {name} (cfg: {self.cfg.model_name})")
        return views[name]

    embed = property(lambda self: self._piece("embed"), doc="`model.embed(tokens)`, `.W_E`")
    pos_embed = property(lambda self: self._piece("pos_embed"),
                         doc="`model.pos_embed(tokens)`, `.W_pos` (standard positions only)")
    unembed = property(lambda self: self._piece("unembed"), doc="`model.unembed(x)`, `.W_U`, `.b_U`")
    ln_final = property(lambda self: self._piece("ln_final"),
                        doc="`model.ln_final(x)` with its hook points (`.hook_scale`)")

    @property
    def mod_dict(self) -> dict[str, Any]:
        """TransformerLens name -> module view or hook point handle (`blocks.0.attn`,
        `blocks.0.attn.hook_z`, `unembed`, ...)."""
        mods: dict[str, Any] = dict(top_level_views(self))
        for l, block in enumerate(self.blocks):
            mods[f"blocks.{l}"] = block
            for sub in ("attn", "mlp", "ln1", "ln2"):
                if sub in block._tree:
                    mods[f"blocks.{l}.{sub}"] = getattr(block, sub)
        mods.update(self.hook_dict)
        return mods

    def input_to_embed(self, input, prepend_bos=None, padding_side=None, attention_mask=None,
                       past_kv_cache=None):
        """Text or tokens -> (residual [batch, pos, d_model], tokens, None, attention_mask): the
        stream entering block 0, as TransformerLens returns it (no shortformer embedding)."""
        if past_kv_cache is not None:
            raise NotImplementedError("input_to_embed with past_kv_cache: call "
                                      "model(tokens, past_kv_cache=cache), which continues the "
                                      "cached positions itself")
        tokens, mask = self._inputs(input, _DEFAULT if prepend_bos is None else prepend_bos,
                                    _DEFAULT if padding_side is None else padding_side,
                                    attention_mask)
        resid = self(tokens, attention_mask=mask, stop_at_layer=0)
        return resid, tokens, None, mask

    # ------------------------------------------------------------------ parameters
    def state_dict(self) -> dict[str, jax.Array]:
        """{TransformerLens name: array}, e.g. `blocks.0.attn.W_Q` [n_heads, d_model, d_head]."""
        return flat_state_dict(self.params, self.cfg)

    def load_state_dict(self, state_dict: dict, strict: bool = True) -> None:
        """Replace the params from a TransformerLens-named state dict (torch tensors or arrays).
        Always strict: a missing or unexpected key is an error."""
        if not strict:
            raise ValueError("load_state_dict(strict=False): jtlens loads strictly, so a missing "
                             "or extra tensor is never silently skipped; fix the keys instead")
        self.params = jax.tree_util.tree_map(jnp.asarray, params_from_state_dict(state_dict, self.cfg))

    def named_parameters(self) -> Iterator[tuple[str, jax.Array]]:
        return iter(self.state_dict().items())

    def parameters(self) -> Iterator[jax.Array]:
        return iter(self.state_dict().values())

    def process_weights_(self, fold_ln: bool = True, center_writing_weights: bool = True,
                         center_unembed: bool = True,
                         refactor_factored_attn_matrices: bool = False) -> None:
        """TransformerLens's weight processing, swapping in new params and Config (log-probs are
        unchanged; see `jtlens.weights`)."""
        flags = dict(_PROCESS_DEFAULTS, fold_ln=fold_ln, center_writing_weights=center_writing_weights,
                     center_unembed=center_unembed,
                     refactor_factored_attn_matrices=refactor_factored_attn_matrices)
        params = W.process(self.params, self.cfg, **flags)
        self.params = jax.tree_util.tree_map(jnp.asarray, params)
        self.cfg = W.processed_config(self.cfg, **flags)

    # The model's own state-dict steps: `jtlens.weight_processing.ProcessWeights` with its cfg.
    def fold_layer_norm(self, state_dict: dict, fold_biases: bool = True,
                        center_weights: bool = True) -> dict:
        """Flat state dict -> the same with the norms folded into the weights that read them
        (norm weights dropped). jtlens always folds biases and centres LayerNorm readers."""
        return ProcessWeights.fold_layer_norm(state_dict, self.cfg, fold_biases, center_weights)

    def center_writing_weights(self, state_dict: dict) -> dict:
        return ProcessWeights.center_writing_weights(state_dict, self.cfg)

    def center_unembed(self, state_dict: dict) -> dict:
        return ProcessWeights.center_unembed(state_dict)

    def fold_value_biases(self, state_dict: dict) -> dict:
        return ProcessWeights.fold_value_biases(state_dict, self.cfg)

    def refactor_factored_attn_matrices(self, state_dict: dict) -> dict:
        return ProcessWeights.refactor_factored_attn_matrices(state_dict, self.cfg)

    # ------------------------------------------------------------------ torch module methods
    def to(self, device_or_dtype, print_details: bool = False):
        """Move the params to a JAX device (`"cpu"`, `"cuda"`/`"gpu"`, `"tpu"`, a jax.Device) or
        cast them to a dtype (`"float32"`, `"bfloat16"`, a jnp dtype). Returns the model."""
        if isinstance(device_or_dtype, str) and device_or_dtype.split(":")[0] in (
                "cpu", "cuda", "gpu", "tpu"):
            platform, _, index = device_or_dtype.partition(":")
            platform = "gpu" if platform == "cuda" else platform
            try:
                device = jax.devices(platform)[int(index or 0)]
            except RuntimeError:
                raise ValueError(f"no JAX {platform} device here (have "
                                 f"{[str(d) for d in jax.devices()]})") from None
        elif isinstance(device_or_dtype, jax.Device):
            device = device_or_dtype
        else:
            dtype = jnp.dtype(device_or_dtype)
            self.params = jax.tree_util.tree_map(lambda a: a.astype(dtype), self.params)
            self.cfg = self.cfg.replace(dtype=dtype.name)
            return self
        self.params = jax.device_put(self.params, device)
        if print_details:
            print("Moving model to device:", device)
        return self

    def cuda(self, device=None):
        return self.to("cuda" if device is None else f"cuda:{device}")

    def cpu(self):
        return self.to("cpu")

    def eval(self):
        """No-op (returns the model): jtlens has no dropout or training mode."""
        return self

    def train(self, mode: bool = True):
        """No-op (returns the model): jtlens has no dropout or training mode."""
        return self

    def requires_grad_(self, requires_grad: bool = True):
        """No-op: take gradients with jax.grad of a function of `model.params`."""
        return self
