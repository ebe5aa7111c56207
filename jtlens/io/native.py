"""jtlens's own saved format: `jtlens_config.json` (the Config and the weight processing applied),
`params.msgpack` (flax serialization), the tokenizer's files and `jtlens_manifest.json`.

    save_converted("out/", cfg, params, tokenizer)
    cfg, params, processing = load_native(Path("out/"))

`loading` reads this format beside Hugging Face and GGUF checkpoints; `gguf_models` caches its
conversions in it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import numpy as np

from jtlens.core.config import Config
from jtlens.core.params import check_and_cast
from jtlens.io import checkpoint_io
from jtlens.io.checkpoint_io import read_json

NATIVE_CONFIG, NATIVE_PARAMS = "jtlens_config.json", "params.msgpack"


def save_converted(path, cfg: Config, params: dict, tokenizer: Any = None,
                   processing: Optional[dict] = None, overwrite: bool = False) -> Path:
    """Write a model in jtlens's format: `jtlens_config.json` (the Config and which weight
    processing was applied), `params.msgpack` (flax serialization), the tokenizer's files and
    `jtlens_manifest.json` (sizes and hashes, written last).

    The folder is written beside `path` and renamed into place, so an interrupted save leaves
    the previous contents intact. A non-empty `path` is refused unless `overwrite=True`.
    """
    from flax import serialization

    checkpoint_io.check_destination(Path(path), overwrite)
    meta = {"config": cfg.to_dict(), "processing": dict(processing or {})}
    blob = serialization.msgpack_serialize(_to_numpy(params))

    def fill(folder: Path):
        (folder / NATIVE_CONFIG).write_text(json.dumps(meta, indent=1, default=list))
        (folder / NATIVE_PARAMS).write_bytes(blob)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(folder))

    return checkpoint_io.write_folder(path, fill, overwrite=overwrite)


def load_native(folder: Path) -> tuple[Config, dict, dict]:
    from flax import serialization

    blob = (folder / NATIVE_PARAMS).read_bytes() if (folder / NATIVE_PARAMS).is_file() else None
    checkpoint_io.check_manifest(folder, hashed={NATIVE_PARAMS: blob} if blob is not None else None)
    meta = read_json(folder / NATIVE_CONFIG)
    if not isinstance(meta.get("config"), dict):
        raise ValueError(f"{folder / NATIVE_CONFIG}: no \"config\" object; this is not a jtlens "
                         f"model config")
    try:
        cfg = Config.from_dict(_tuples(meta["config"]))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{folder / NATIVE_CONFIG}: {err}") from None
    try:
        raw = serialization.msgpack_restore(blob)
    except Exception as err:  # msgpack raises its own exception types
        raise ValueError(f"{folder / NATIVE_PARAMS}: unreadable params ({type(err).__name__}: "
                         f"{err})") from None
    return cfg, check_and_cast(raw, cfg, dtype="float32"), meta.get("processing", {})


def _tuples(d: dict) -> dict:
    """JSON turns tuples into lists; Config needs hashable fields."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def _to_numpy(tree):
    if isinstance(tree, dict):
        return {k: _to_numpy(v) for k, v in tree.items()}
    return np.asarray(tree)
