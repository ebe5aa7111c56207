"""An SAE's configuration: SAELens 6's `SAEConfig` fields, frozen and hashable (static under jit)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Optional

# The SAELens release whose cfg.json layout jtlens reads and writes. SAELens reads a cfg.json
# without `metadata.sae_lens_version` (or older than 6.0) as a pre-6.0 config, so saves carry it.
SAELENS_FORMAT_VERSION = "6.54.12"

ARCHITECTURES = ("standard", "topk", "jumprelu", "gated")
NORMALIZATIONS = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm",
                  "covariance_whitening")
RESHAPES = ("none", "hook_z")


class Metadata:
    """SAELens's `SAEMetadata`: free-form fields read as attributes or keys; a missing one is
    None (`cfg.metadata.hook_name`). Immutable and hashable, so a config stays a jit static."""

    def __init__(self, **fields: Any):
        object.__setattr__(self, "_fields", dict(fields))
        object.__setattr__(self, "_key", json.dumps(fields, sort_keys=True, default=str))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return self._fields.get(name)

    def __setattr__(self, name, value):
        raise AttributeError("SAE metadata is immutable: use cfg.replace(metadata=...) or "
                             "metadata.replace(field=value)")

    def __getitem__(self, key: str) -> Any:
        return self._fields.get(key)

    def __contains__(self, key: str) -> bool:
        return key in self._fields

    def get(self, key: str, default: Any = None) -> Any:
        return self._fields.get(key, default)

    def keys(self):
        return self._fields.keys()

    def items(self):
        return self._fields.items()

    def replace(self, **fields: Any) -> "Metadata":
        return Metadata(**{**self._fields, **fields})

    def to_dict(self) -> dict:
        return dict(self._fields)

    def __eq__(self, other) -> bool:
        return isinstance(other, Metadata) and self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __repr__(self) -> str:
        return f"Metadata({self._fields})"


@dataclasses.dataclass(frozen=True)
class SAEConfig:
    """SAELens 6's SAE config (`sae.cfg`), plus the TopK fields for `architecture="topk"`.

    d_in: the hooked activation's width (n_heads * d_head for a hook_z SAE). d_sae: latents.
    apply_b_dec_to_input: subtract b_dec before encoding. normalize_activations: "none",
    "expected_average_only_in" (a factor applied by the activation store, identity here),
    "constant_norm_rescale", "layer_norm" or "covariance_whitening" (folded into the weights
    after training, identity here). reshape_activations: "hook_z" flattens [.., heads, d_head].
    k, rescale_acts_by_decoder_norm: TopK only. metadata: hook_name, model_name, ...
    """

    d_in: int
    d_sae: int
    architecture: str = "standard"
    dtype: str = "float32"
    device: str = "cpu"
    apply_b_dec_to_input: bool = True
    normalize_activations: str = "none"
    reshape_activations: str = "none"
    k: Optional[int] = None
    rescale_acts_by_decoder_norm: bool = False
    metadata: Metadata = dataclasses.field(default_factory=Metadata)

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            hint = (" (a BatchTopK SAE runs as 'jumprelu' or 'topk': see "
                    "jtlens.sparse.batchtopk_to_jumprelu)" if self.architecture == "batchtopk" else "")
            raise ValueError(f"architecture={self.architecture!r}: use one of {ARCHITECTURES}{hint}")
        if self.normalize_activations not in NORMALIZATIONS:
            raise ValueError(f"normalize_activations={self.normalize_activations!r}: use one of "
                             f"{NORMALIZATIONS}")
        if self.reshape_activations not in RESHAPES:
            raise ValueError(f"reshape_activations={self.reshape_activations!r}: use one of {RESHAPES}")
        if self.architecture == "topk" and not (isinstance(self.k, int) and 0 < self.k <= self.d_sae):
            raise ValueError(f"a topk SAE needs an integer k in 1..d_sae={self.d_sae}; got k={self.k!r}")
        if isinstance(self.metadata, dict):
            object.__setattr__(self, "metadata", Metadata(**self.metadata))

    @property
    def hook_name(self) -> Optional[str]:
        return self.metadata.hook_name

    def replace(self, **changes) -> "SAEConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """The cfg.json dict SAELens 6 writes (TopK keys only for TopK SAEs)."""
        out = {f: getattr(self, f) for f in ("d_in", "d_sae", "dtype", "device",
                                              "apply_b_dec_to_input", "normalize_activations",
                                              "reshape_activations")}
        if self.architecture == "topk":
            out.update(k=self.k, rescale_acts_by_decoder_norm=self.rescale_acts_by_decoder_norm)
        meta = {"sae_lens_version": SAELENS_FORMAT_VERSION,
                "sae_lens_training_version": SAELENS_FORMAT_VERSION, **self.metadata.to_dict()}
        return {**out, "metadata": meta, "architecture": self.architecture}


PARAM_NAMES = {"standard": ("W_enc", "b_enc", "W_dec", "b_dec"),
               "topk": ("W_enc", "b_enc", "W_dec", "b_dec"),
               "jumprelu": ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"),
               "gated": ("W_enc", "b_gate", "r_mag", "b_mag", "W_dec", "b_dec")}


def param_shapes(cfg: SAEConfig) -> dict[str, tuple]:
    """name -> shape of every tensor an SAE of `cfg` holds (SAELens's state dict)."""
    d_in, d_sae = cfg.d_in, cfg.d_sae
    shapes = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    return {n: shapes.get(n, (d_sae,)) for n in PARAM_NAMES[cfg.architecture]}
