"""SAE files: SAELens's folder (v6 and pre-6.0 configs) and EleutherAI sparsify's, without torch.

SAELens: `cfg.json` + `sae_weights.safetensors` (W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc,
b_dec, threshold, ...) + optional `sparsity.safetensors` (`sparsity`: log10 feature density).
sparsify: `<hookpoint>/cfg.json` (d_in, k, num_latents or expansion_factor) + `sae.safetensors`
(encoder.weight [d_sae, d_in], encoder.bias, W_dec [d_sae, d_in], b_dec).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Optional, Union

import jax.numpy as jnp
import numpy as np
from safetensors.flax import load_file
from safetensors.numpy import save_file

from jtlens.io.checkpoint_io import write_folder
from jtlens.experiments.sparse.config import SAEConfig, param_shapes

CFG_FILE, WEIGHTS_FILE, SPARSITY_FILE = "cfg.json", "sae_weights.safetensors", "sparsity.safetensors"
SPARSIFY_WEIGHTS_FILE = "sae.safetensors"

_CONFIG_FIELDS = ("d_in", "d_sae", "architecture", "dtype", "device", "apply_b_dec_to_input",
                  "normalize_activations", "reshape_activations", "k",
                  "rescale_acts_by_decoder_norm")
# What SAELens keeps as metadata when it upgrades a pre-6.0 config (its LLM_METADATA_KEYS).
_PRE6_METADATA = ("model_name", "hook_name", "model_class_name", "hook_head_index",
                  "model_from_pretrained_kwargs", "prepend_bos", "exclude_special_tokens",
                  "neuronpedia_id", "context_size", "seqpos_slice", "dataset_path",
                  "sae_lens_version", "sae_lens_training_version", "hook_name_out",
                  "hook_head_index_out", "hf_hook_name", "hf_hook_name_out")


def _version(v: Optional[str]) -> tuple:
    nums = re.findall(r"\d+", v or "")
    return tuple(int(n) for n in nums[:3])


def is_pre_6(cfg: dict) -> bool:
    """SAELens's rule: a config without a sae_lens_version, or one older than 6.0."""
    version = cfg.get("sae_lens_version") or (cfg.get("metadata") or {}).get("sae_lens_version")
    return not version or _version(version) < (6,)


def upgrade_pre_6(cfg: dict) -> dict:
    """A pre-6.0 cfg.json as SAELens 6 reads it: `hook_point` -> `metadata.hook_name`,
    `activation_fn: topk` + `activation_fn_kwargs.k` -> `architecture: topk`, `k`; boolean
    `normalize_activations` -> "expected_average_only_in" / "none"; hook_z SAEs reshape."""
    renames = {"hook_point": "hook_name", "hook_point_head_index": "hook_head_index",
               "activation_fn_str": "activation_fn"}
    c = {renames.get(k, k): v for k, v in cfg.items()}
    c.setdefault("apply_b_dec_to_input", True)
    c.setdefault("architecture", "standard")
    c.setdefault("prepend_bos", True)
    c.setdefault("reshape_activations", "hook_z" if "hook_z" in (c.get("hook_name") or "") else "none")
    kwargs = c.get("activation_fn_kwargs") or {}
    fn = c.get("activation_fn") or "relu"
    # SAELens 6 reads any other activation_fn as ReLU; jtlens refuses rather than guess
    if fn not in ("relu", "topk") or (fn == "topk" and kwargs.get("k") is None):
        raise ValueError(f"this pre-6.0 SAE has activation_fn={fn!r} with activation_fn_kwargs="
                         f"{kwargs}; jtlens reads 'relu' and 'topk' (with a k) only")
    if fn == "topk":
        c["architecture"], c["k"] = "topk", kwargs["k"]
    if c.get("finetuning_scaling_factor"):
        raise ValueError("this SAE has finetuning_scaling_factor=True (a pre-6.0 feature SAELens 6 "
                         "dropped); fold the scaling factor into W_dec before loading it")
    norm = c.get("normalize_activations")
    c["normalize_activations"] = ("none" if norm is None or norm is False else
                                  "expected_average_only_in" if norm is True else norm)
    out = {k: c[k] for k in _CONFIG_FIELDS if k in c}
    out["metadata"] = {k: v for k, v in c.items() if k in _PRE6_METADATA}
    return out


def config_from_dict(cfg: dict, dtype: Optional[str] = None) -> SAEConfig:
    """An SAEConfig from a cfg.json dict (v6 or pre-6.0); unknown keys are SAELens's and ignored."""
    if is_pre_6(cfg):
        cfg = upgrade_pre_6(cfg)
    missing = [k for k in ("d_in", "d_sae") if k not in cfg]
    if missing:
        raise ValueError(f"cfg.json lacks {missing}: this is not an SAELens SAE config")
    fields = {k: cfg[k] for k in _CONFIG_FIELDS if k in cfg}
    if fields.get("architecture", "standard") != "topk":
        fields.pop("k", None)
        fields.pop("rescale_acts_by_decoder_norm", None)
    if dtype is not None:
        fields["dtype"] = dtype
    return SAEConfig(**fields, metadata=dict(cfg.get("metadata") or {}))


def _check_params(tensors: dict, cfg: SAEConfig, where: Path) -> dict:
    """The tensors as SAE params: every expected name present with its shape, nothing extra."""
    tensors = dict(tensors)
    scale = tensors.pop("scaling_factor", None)
    if scale is not None and not np.allclose(np.asarray(scale, np.float32), 1.0):
        raise ValueError(f"{where}: holds a scaling_factor other than 1 (pre-6.0 fine-tuning "
                         f"scale); fold it into W_dec before loading")
    expected = param_shapes(cfg)
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise ValueError(f"{where}: tensor {extra[0]!r} is not part of a {cfg.architecture} SAE "
                         f"(expected {sorted(expected)}); check cfg.json's architecture")
    for name, shape in expected.items():
        if name not in tensors:
            raise ValueError(f"{where}: tensor {name!r} is missing (a {cfg.architecture} SAE has "
                             f"{sorted(expected)})")
        if tuple(tensors[name].shape) != shape:
            raise ValueError(f"{where}: {name} has shape {tuple(tensors[name].shape)}; cfg.json "
                             f"(d_in={cfg.d_in}, d_sae={cfg.d_sae}) needs {shape}")
    return {n: jnp.asarray(tensors[n]).astype(cfg.dtype) for n in expected}


def read_sae(path: Union[str, Path], dtype: Optional[str] = None) -> tuple[dict, SAEConfig]:
    """(params, cfg) of an SAELens SAE folder (cfg.json + sae_weights.safetensors)."""
    path = Path(path)
    cfg_file = path / CFG_FILE
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{path} has no {CFG_FILE}: give the folder SAELens's "
                                f"save_model wrote (cfg.json + {WEIGHTS_FILE})")
    cfg = config_from_dict(json.loads(cfg_file.read_text()), dtype)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{path} has {CFG_FILE} but no {WEIGHTS_FILE}")
    return _check_params(load_file(str(weights)), cfg, weights), cfg


def load_sparsity(path: Union[str, Path]):
    """The log10 feature densities [d_sae] from sparsity.safetensors, or None if absent."""
    f = Path(path) / SPARSITY_FILE
    return load_file(str(f))["sparsity"] if f.is_file() else None


def write_sae(params: dict, cfg: SAEConfig, path: Union[str, Path], sparsity: Any = None,
              overwrite: bool = False) -> Path:
    """Write an SAE's params and cfg as an SAELens 6 folder (atomically), with
    sparsity.safetensors if given."""
    def fill(tmp: Path):
        save_file({n: np.asarray(a) for n, a in params.items()}, str(tmp / WEIGHTS_FILE))
        (tmp / CFG_FILE).write_text(json.dumps(cfg.to_dict()))
        if sparsity is not None:
            save_file({"sparsity": np.asarray(sparsity)}, str(tmp / SPARSITY_FILE))

    return write_folder(path, fill, overwrite=overwrite)


def sparsify_hook_name(folder: str) -> str:
    """sparsify's hookpoint folder (`layers.6`, `embed_tokens`) -> the TransformerLens hook name
    (the residual stream after that layer, as SAELens maps it)."""
    if folder == "embed_tokens":
        return "hook_embed"
    m = re.search(r"layers[._](\d+)$", folder)
    if m is None:
        raise ValueError(f"sparsify folder {folder!r}: expected a hookpoint such as 'layers.6' "
                         f"(residual stream after layer 6) or 'embed_tokens'")
    return f"blocks.{m.group(1)}.hook_resid_post"


def read_sparsify(path: Union[str, Path], dtype: Optional[str] = None) -> tuple[dict, SAEConfig]:
    """(params, cfg) of an EleutherAI sparsify SAE folder (`<hookpoint>/cfg.json` +
    sae.safetensors), as a TopK SAE."""
    path = Path(path)
    raw = json.loads((path / CFG_FILE).read_text())
    for flag in ("transcode", "skip_connection"):
        if raw.get(flag):
            raise ValueError(f"{path}: a sparsify {flag} model is a transcoder, not an SAE; "
                             f"jtlens loads sparsify SAEs only")
    if raw.get("activation", "topk") != "topk":
        raise ValueError(f"{path}: activation={raw['activation']!r}; jtlens loads sparsify's "
                         f"'topk' SAEs only")
    t = load_file(str(path / SPARSIFY_WEIGHTS_FILE))
    d_in = raw["d_in"]
    d_sae = raw.get("num_latents") or d_in * raw["expansion_factor"]
    model = {}
    top = path.parent / "config.json"
    if top.is_file():
        model = json.loads(top.read_text())
    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, architecture="topk", k=raw["k"],
                    dtype=dtype or str(t["encoder.weight"].dtype),
                    metadata=dict(hook_name=sparsify_hook_name(path.name),
                                  model_name=model.get("model"),
                                  context_size=model.get("ctx_len")))
    W_enc = t.pop("encoder.weight").T
    b_enc = t.pop("encoder.bias", jnp.zeros((d_sae,), W_enc.dtype))
    tensors = dict(W_enc=W_enc, b_enc=b_enc, W_dec=t.pop("W_dec"), b_dec=t.pop("b_dec"))
    if t:
        raise ValueError(f"{path / SPARSIFY_WEIGHTS_FILE}: unexpected tensor {sorted(t)[0]!r}")
    return _check_params(tensors, cfg, path / SPARSIFY_WEIGHTS_FILE), cfg
