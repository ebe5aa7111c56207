"""jtlens's own saved format: `jtlens_config.json` (the Config and the weight processing applied),
`params.safetensors` (keys are the params' dotted paths; older folders' `params.msgpack`, flax
serialization, still load), the tokenizer's files and `jtlens_manifest.json`.

    save_converted("out/", cfg, params, tokenizer)
    cfg, params, processing = load_native(Path("out/"))

`loading` reads this format beside Hugging Face and GGUF checkpoints; `gguf_models` caches its
conversions in it.
"""

from __future__ import annotations

import json
import mmap
from pathlib import Path
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jtlens.core.config import Config
from jtlens.core.params import check_shapes, param_shapes
from jtlens.io import checkpoint_io
from jtlens.io.checkpoint_io import read_json

NATIVE_CONFIG, NATIVE_PARAMS = "jtlens_config.json", "params.safetensors"
# Folders saved before the params moved to safetensors (flax msgpack): still read, never written.
LEGACY_PARAMS = "params.msgpack"


def save_converted(path, cfg: Config, params: dict, tokenizer: Any = None,
                   processing: Optional[dict] = None, overwrite: bool = False) -> Path:
    """Write a model in jtlens's format: `jtlens_config.json` (the Config and which weight
    processing was applied), `params.safetensors` (keys are the params' dotted paths,
    "blocks.attn.W_Q"), the tokenizer's files and `jtlens_manifest.json` (sizes and hashes,
    written last).

    The folder is written beside `path` and renamed into place, so an interrupted save leaves
    the previous contents intact. A non-empty `path` is refused unless `overwrite=True`.
    """
    from safetensors.numpy import save_file

    checkpoint_io.check_destination(Path(path), overwrite)
    meta = {"config": cfg.to_dict(), "processing": dict(processing or {})}
    flat = _flatten(params)
    # safetensors' numpy API has no bfloat16: such arrays travel as their uint16 bits, named here.
    bf16 = sorted(k for k, v in flat.items() if v.dtype == jnp.bfloat16)
    arrays = {k: v.view(np.uint16) if k in bf16 else v for k, v in flat.items()}

    def fill(folder: Path):
        (folder / NATIVE_CONFIG).write_text(json.dumps(meta, indent=1, default=list))
        # straight to the file: serialising to bytes first held a second copy of the model
        save_file(arrays, folder / NATIVE_PARAMS, metadata={"bfloat16": ",".join(bf16)} if bf16 else None)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(folder))

    return checkpoint_io.write_folder(path, fill, overwrite=overwrite)


def load_native(folder: Path, verify_contents: bool = True) -> tuple[Config, dict, dict]:
    """(cfg, params as float32 numpy, the processing steps applied) of a saved folder.

    verify_contents: check the params file's sha256 against the manifest (sizes are always
    checked); off for jtlens's own conversion cache, which only jtlens writes, atomically."""
    name = LEGACY_PARAMS if (folder / LEGACY_PARAMS).is_file() else NATIVE_PARAMS
    blob = _map(folder / name) if (folder / name).is_file() else None
    checkpoint_io.check_manifest(folder, hashed={name: blob} if blob is not None and verify_contents
                                 else None)
    meta = read_json(folder / NATIVE_CONFIG)
    if not isinstance(meta.get("config"), dict):
        raise ValueError(f"{folder / NATIVE_CONFIG}: no \"config\" object; this is not a jtlens "
                         f"model config")
    try:
        cfg = Config.from_dict(_tuples(meta["config"]))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{folder / NATIVE_CONFIG}: {err}") from None
    try:
        raw = _read_params(blob, legacy=name == LEGACY_PARAMS)
    except Exception as err:  # msgpack and safetensors raise their own exception types
        raise ValueError(f"{folder / name}: unreadable params ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''})") from None
    # float32 numpy: weight processing runs on the host, and `load` puts the result on the device
    # once (a device copy here would come straight back for processing).
    params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32),
                                    check_shapes(raw, param_shapes(cfg)))
    return cfg, params, meta.get("processing", {})


def _map(path: Path):
    """The file's bytes, memory-mapped: the params view the page cache instead of a private copy
    of the whole file (which costs a page fault per 4 KiB before a single byte is used)."""
    if path.stat().st_size == 0:
        return b""
    with open(path, "rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": jnp.bfloat16,
                       "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
                       "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8,
                       "BOOL": np.bool_}


def _read_params(blob: bytes, legacy: bool) -> dict:
    if legacy:
        from flax import serialization

        return serialization.msgpack_restore(blob)
    return _unflatten(_safetensors_views(blob))


def _safetensors_views(blob: bytes) -> dict:
    """{name: read-only array viewing `blob`}: safetensors' layout read without copying the
    data (safetensors.numpy.load copies every tensor, a second copy of the whole model)."""
    (size,) = np.frombuffer(blob[:8], "<u8")
    header = json.loads(blob[8:8 + int(size)])
    bf16 = set(filter(None, (header.pop("__metadata__", None) or {}).get("bfloat16", "").split(",")))
    data = memoryview(blob)[8 + int(size):]
    out = {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        if entry["dtype"] not in _SAFETENSORS_DTYPES:
            raise ValueError(f"tensor {name!r} has dtype {entry['dtype']}, which jtlens does not read")
        dtype = np.dtype(_SAFETENSORS_DTYPES[entry["dtype"]])
        arr = np.frombuffer(data[begin:end], dtype).reshape(entry["shape"])
        out[name] = arr.view(jnp.bfloat16) if name in bf16 else arr
    return out


def _flatten(tree, prefix: str = "") -> dict:
    """Nested params -> {"blocks.attn.W_Q": array} (numpy, contiguous), as safetensors stores."""
    if isinstance(tree, dict):
        return {k: v for name, sub in tree.items() for k, v in _flatten(sub, f"{prefix}{name}.").items()}
    return {prefix[:-1]: np.ascontiguousarray(np.asarray(tree))}


def _unflatten(flat: dict) -> dict:
    tree: dict = {}
    for key, value in flat.items():
        *path, leaf = key.split(".")
        node = tree
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def _tuples(d: dict) -> dict:
    """JSON turns tuples into lists; Config needs hashable fields."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
