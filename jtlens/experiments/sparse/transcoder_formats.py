"""Transcoder files: SAELens's per-layer folders and circuit-tracer's folders, without torch.

SAELens 6 (one folder per layer): cfg.json (architecture transcoder | skip_transcoder |
jumprelu_transcoder | jumprelu_skip_transcoder, d_in, d_sae, d_out, metadata.hook_name /
hook_name_out) + sae_weights.safetensors (W_enc [d_in, d_sae], b_enc, W_dec [d_sae, d_out], b_dec,
threshold, W_skip [d_out, d_in]).

circuit-tracer: config.yaml (model_kind, feature_input_hook, feature_output_hook, optional
activation: topk + k, optional `transcoders` list of files) and
- transcoder_set: layer_{i}.safetensors: W_enc [d_tc, d_model] (transposed vs SAELens), W_dec
  [d_tc, d_model], b_enc, b_dec, optional activation_function.threshold and W_skip [d_out, d_in];
- cross_layer_transcoder: W_enc_{i}.safetensors (W_enc_i [d_tc, d_model], b_enc_i, b_dec_i,
  optional threshold_i) and W_dec_{i}.safetensors (W_dec_i [d_tc, n_layers - i, d_model]).
circuit-tracer's `mlp.hook_in` / `mlp.hook_out` (hooks it adds around the MLP) are jtlens's
`ln2.hook_normalized` / `hook_mlp_out` (for models without a norm after the MLP) when the model
is loaded with fold_ln, jtlens's default; circuit-tracer's own loader does not fold, and there
`mlp.hook_in` is ln2's output times its weight: transcoders trained that way read jtlens's hook
after `transcoder.fold_input_norm(tc, ln2 weight, ln2 bias)`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional, Union

import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file, save_file

from jtlens.experiments.sparse.config import SAELENS_FORMAT_VERSION
from jtlens.experiments.sparse.formats import CFG_FILE, WEIGHTS_FILE
from jtlens.experiments.sparse.transcoder import TranscoderConfig, Transcoders, param_shapes
from jtlens.io.checkpoint_io import write_folder

PathLike = Union[str, Path]
YAML_FILE = "config.yaml"
CT_HOOKS = {"mlp.hook_in": "ln2.hook_normalized", "mlp.hook_out": "hook_mlp_out"}
_SAELENS_ARCH = {("relu", False): "transcoder", ("relu", True): "skip_transcoder",
                 ("jumprelu", False): "jumprelu_transcoder",
                 ("jumprelu", True): "jumprelu_skip_transcoder"}


def _stack(per_layer: list[dict], cfg: TranscoderConfig, where: Path) -> Transcoders:
    """Stack per-layer tensors (SAELens orientation) into Transcoders, checking every shape."""
    expected = param_shapes(cfg)
    params = {}
    for name, shape in expected.items():
        for i, t in enumerate(per_layer):
            if name not in t:
                raise ValueError(f"{where}: layer {i} lacks tensor {name!r} (a {cfg.activation}"
                                 f"{' skip' if cfg.skip else ''} transcoder has {sorted(expected)})")
            if tuple(t[name].shape) != shape[1:]:
                raise ValueError(f"{where}: layer {i}'s {name} has shape {tuple(t[name].shape)}; "
                                 f"expected {shape[1:]}")
        params[name] = jnp.asarray(np.stack([np.asarray(t[name], np.float32) for t in per_layer]))
    return Transcoders(params, cfg)


def _template(hook: Optional[str], layer: int, default: str) -> str:
    """`blocks.3.ln2.hook_normalized` -> `ln2.hook_normalized` (checking the layer)."""
    if not hook:
        return default
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", hook)
    if m is None:
        return CT_HOOKS.get(hook, hook)
    if int(m.group(1)) != layer:
        raise ValueError(f"the transcoder given for layer {layer} is for hook {hook!r}; give the "
                         f"folders in layer order, one per layer from 0")
    return m.group(2)


# ----------------------------------------------------------------------------- SAELens

def read_saelens(folders: list[PathLike]) -> Transcoders:
    """Per-layer SAELens transcoder folders (layer 0 first) as one stacked Transcoders."""
    if not folders:
        raise ValueError("give one SAELens transcoder folder per layer, layer 0 first")
    cfgs, tensors = [], []
    for i, folder in enumerate(map(Path, folders)):
        raw = json.loads((folder / CFG_FILE).read_text())
        arch = raw.get("architecture")
        if arch not in _SAELENS_ARCH.values():
            raise ValueError(f"{folder}: architecture={arch!r} is not a transcoder; jtlens reads "
                             f"{sorted(_SAELENS_ARCH.values())}")
        meta = raw.get("metadata") or {}
        cfgs.append(dict(d_in=raw["d_in"], d_transcoder=raw["d_sae"], d_out=raw.get("d_out", raw["d_in"]),
                         activation="jumprelu" if arch.startswith("jumprelu") else "relu",
                         skip="skip" in arch,
                         input_hook=_template(meta.get("hook_name"), i, "ln2.hook_normalized"),
                         output_hook=_template(meta.get("hook_name_out"), i, "hook_mlp_out")))
        if raw.get("normalize_activations", "none") != "none":
            raise ValueError(f"{folder}: normalize_activations={raw['normalize_activations']!r}; "
                             f"jtlens reads transcoders without input normalisation only")
        tensors.append(load_file(str(folder / WEIGHTS_FILE)))
    if any(c != cfgs[0] for c in cfgs):
        raise ValueError(f"the folders hold transcoders of different shapes or kinds: {cfgs}")
    cfg = TranscoderConfig(n_layers=len(folders), **cfgs[0])
    return _stack(tensors, cfg, Path(folders[0]).parent)


def write_saelens(tc: Transcoders, path: PathLike, overwrite: bool = False,
                  model_name: Optional[str] = None) -> Path:
    """Write per-layer SAELens 6 transcoder folders `path/layer_{i}` (atomically, as one folder)."""
    cfg = tc.cfg
    if cfg.cross_layer or cfg.activation == "topk":
        raise ValueError("SAELens has no format for cross-layer or TopK transcoders; use "
                         "write_circuit_tracer")
    arch = _SAELENS_ARCH[(cfg.activation, cfg.skip)]

    def fill(tmp: Path):
        for i in range(cfg.n_layers):
            d = tmp / f"layer_{i}"
            d.mkdir()
            save_file({n: np.asarray(a) for n, a in tc.layer(i).items()}, str(d / WEIGHTS_FILE))
            meta = {"sae_lens_version": SAELENS_FORMAT_VERSION,
                    "sae_lens_training_version": SAELENS_FORMAT_VERSION, "model_name": model_name,
                    "hook_name": f"blocks.{i}.{cfg.input_hook}",
                    "hook_name_out": f"blocks.{i}.{cfg.output_hook}"}
            (d / CFG_FILE).write_text(json.dumps(
                {"d_in": cfg.d_in, "d_sae": cfg.d_transcoder, "dtype": "float32", "device": "cpu",
                 "apply_b_dec_to_input": False, "normalize_activations": "none",
                 "reshape_activations": "none", "metadata": meta, "d_out": cfg.d_out,
                 "architecture": arch}))

    return write_folder(path, fill, overwrite=overwrite)


# ----------------------------------------------------------------------------- circuit-tracer

def _yaml():
    import yaml  # PyYAML, installed with transformers

    return yaml


def read_circuit_tracer(path: PathLike) -> Transcoders:
    """A circuit-tracer transcoder folder (config.yaml + layer_{i} or W_enc_{i}/W_dec_{i} files)."""
    path = Path(path)
    if not (path / YAML_FILE).is_file():
        raise FileNotFoundError(f"{path} has no {YAML_FILE}: give the folder of a circuit-tracer "
                                f"transcoder set or CLT")
    conf = _yaml().safe_load((path / YAML_FILE).read_text())
    kind = conf.get("model_kind")
    hooks = dict(input_hook=CT_HOOKS.get(conf["feature_input_hook"], conf["feature_input_hook"]),
                 output_hook=CT_HOOKS.get(conf["feature_output_hook"], conf["feature_output_hook"]),
                 scan=conf.get("scan"))
    if kind == "transcoder_set":
        return _read_set(path, conf, hooks)
    if kind == "cross_layer_transcoder":
        return _read_clt(path, conf, hooks)
    raise ValueError(f"{path / YAML_FILE}: model_kind={kind!r}; expected 'transcoder_set' or "
                     f"'cross_layer_transcoder'")


def _layer_files(path: Path, conf: dict, pattern: str) -> list[Path]:
    """The per-layer files in layer order (the config's list, or `pattern` numbered from 0)."""
    if conf.get("transcoders"):
        remote = [p for p in conf["transcoders"] if "://" in str(p)]
        if remote:
            raise ValueError(f"{path / YAML_FILE} lists remote files ({remote[0]}); download them "
                             f"next to config.yaml and list them by file name")
        return [path / p for p in conf["transcoders"]]
    files = sorted(path.glob(pattern.format(i="*")), key=lambda f: int(re.findall(r"\d+", f.name)[-1]))
    if not files:
        raise FileNotFoundError(f"{path}: no {pattern.format(i='*')} files")
    expect = [path / pattern.format(i=i) for i in range(len(files))]
    if files != expect:
        raise ValueError(f"{path}: layer files must be numbered 0..{len(files) - 1}; found "
                         f"{[f.name for f in files]}")
    return files


def _activation(conf: dict, has_threshold: bool) -> dict:
    if conf.get("activation") == "topk":
        return dict(activation="topk", k=int(conf["k"]))
    return dict(activation="jumprelu" if has_threshold else "relu")


def _read_set(path: Path, conf: dict, hooks: dict) -> Transcoders:
    tensors = [load_file(str(f)) for f in _layer_files(path, conf, "layer_{i}.safetensors")]
    first = tensors[0]
    d_tc, d_in = first["W_enc"].shape
    cfg = TranscoderConfig(n_layers=len(tensors), d_in=d_in, d_transcoder=d_tc,
                           d_out=first["b_dec"].shape[0], skip="W_skip" in first,
                           **_activation(conf, "activation_function.threshold" in first), **hooks)
    per_layer = []
    for t in tensors:
        t = dict(t)
        t.pop("k", None)  # circuit-tracer also stores a TopK k as a tensor
        t["W_enc"] = t["W_enc"].T
        if "activation_function.threshold" in t:
            t["threshold"] = t.pop("activation_function.threshold").reshape(-1)
        per_layer.append(t)
    return _stack(per_layer, cfg, path)


def _read_clt(path: Path, conf: dict, hooks: dict) -> Transcoders:
    enc = [load_file(str(f)) for f in _layer_files(path, conf, "W_enc_{i}.safetensors")]
    L = len(enc)
    dec = [load_file(str(path / f"W_dec_{i}.safetensors"))[f"W_dec_{i}"] for i in range(L)]
    d_tc, d_in = enc[0]["W_enc_0"].shape
    d_out = enc[0]["b_dec_0"].shape[0]
    cfg = TranscoderConfig(n_layers=L, d_in=d_in, d_transcoder=d_tc, d_out=d_out,
                           cross_layer=True, **_activation(conf, "threshold_0" in enc[0]), **hooks)
    per_layer = []
    for i, (e, w) in enumerate(zip(enc, dec)):
        if tuple(w.shape) != (d_tc, L - i, d_out):
            raise ValueError(f"{path}: W_dec_{i} has shape {tuple(w.shape)}; a {L}-layer CLT "
                             f"needs {(d_tc, L - i, d_out)}")
        full = np.zeros((d_tc, L, d_out), np.float32)
        full[:, i:] = w
        t = {"W_enc": e[f"W_enc_{i}"].T, "b_enc": e[f"b_enc_{i}"], "b_dec": e[f"b_dec_{i}"],
             "W_dec": full}
        if f"threshold_{i}" in e:
            t["threshold"] = e[f"threshold_{i}"].reshape(-1)
        per_layer.append(t)
    return _stack(per_layer, cfg, path)


def write_circuit_tracer(tc: Transcoders, path: PathLike, overwrite: bool = False) -> Path:
    """Write transcoders as circuit-tracer reads them (config.yaml + per-layer safetensors)."""
    cfg = tc.cfg
    if cfg.cross_layer and cfg.skip:
        raise ValueError("circuit-tracer's CLT files have no skip path; drop W_skip or save with "
                         "write_saelens per layer")
    conf = {"model_kind": "cross_layer_transcoder" if cfg.cross_layer else "transcoder_set",
            "feature_input_hook": cfg.input_hook, "feature_output_hook": cfg.output_hook}
    if cfg.scan:
        conf["scan"] = cfg.scan
    if cfg.activation == "topk":
        conf.update(activation="topk", k=cfg.k)

    def fill(tmp: Path):
        (tmp / YAML_FILE).write_text(_yaml().safe_dump(conf, sort_keys=False))
        for i in range(cfg.n_layers):
            p = {n: np.asarray(a) for n, a in tc.layer(i).items()}
            thr = p.pop("threshold", None)
            if cfg.cross_layer:
                enc = {f"W_enc_{i}": p["W_enc"].T.copy(), f"b_enc_{i}": p["b_enc"],
                       f"b_dec_{i}": p["b_dec"]}
                if thr is not None:
                    enc[f"threshold_{i}"] = thr
                save_file(enc, str(tmp / f"W_enc_{i}.safetensors"))
                save_file({f"W_dec_{i}": p["W_dec"][:, i:].copy()}, str(tmp / f"W_dec_{i}.safetensors"))
            else:
                p["W_enc"] = p["W_enc"].T.copy()
                if thr is not None:
                    p["activation_function.threshold"] = thr
                save_file(p, str(tmp / f"layer_{i}.safetensors"))

    return write_folder(path, fill, overwrite=overwrite)
