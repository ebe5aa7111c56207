"""Reading checkpoint tensors from a Hugging Face folder: safetensors first, `.bin` only safely."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
from tqdm.auto import tqdm

from jtlens.conversions.common import ConversionError

SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
TORCH_BIN, TORCH_BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"


def checkpoint_files(folder: Path) -> list[Path]:
    """The weight files of a folder, single or sharded; safetensors preferred over `.bin`."""
    for single, index in ((SAFETENSORS, SAFETENSORS_INDEX), (TORCH_BIN, TORCH_BIN_INDEX)):
        if (folder / index).exists():
            shards = sorted(set(json.loads((folder / index).read_text())["weight_map"].values()))
            missing = [s for s in shards if not (folder / s).exists()]
            if missing:
                raise ConversionError(f"{folder}: {index} names shard {missing[0]}, which is missing")
            return [folder / s for s in shards]
        if (folder / single).exists():
            return [folder / single]
    raise ConversionError(f"{folder}: no weights found (expected {SAFETENSORS}, {SAFETENSORS_INDEX}, "
                          f"{TORCH_BIN} or {TORCH_BIN_INDEX})")


def read_tensors(folder: Path, progress: bool = True) -> dict[str, np.ndarray]:
    """Every tensor of the checkpoint as float32 numpy arrays, by name."""
    files = checkpoint_files(folder)
    tensors: dict[str, np.ndarray] = {}
    with tqdm(desc=f"reading {folder.name}", unit="tensor", disable=not progress) as bar:
        for f in files:
            read = _read_safetensors if f.suffix == ".safetensors" else _read_torch_bin
            for name, array in read(f):
                if name in tensors:
                    raise ConversionError(f"{f.name}: tensor {name!r} also appears in another shard")
                tensors[name] = array
                bar.update()
    return tensors


def _read_safetensors(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    # The flax framework reads bfloat16 too (numpy has no bfloat16 of its own).
    from safetensors import safe_open

    with safe_open(str(path), framework="flax") as f:
        for k in f.keys():
            yield k, np.asarray(f.get_tensor(k), dtype=np.float32)


def _read_torch_bin(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    try:
        import torch
    except ImportError as err:
        raise ConversionError(f"{path.name} is a PyTorch pickle: install torch (pip install "
                              f"'jtlens[torch]') or convert the checkpoint to safetensors") from err
    # weights_only: a pickle may carry code; only tensors are accepted.
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    for k, v in state.items():
        yield k, v.detach().float().numpy()


class LazyTensors(Mapping):
    """The checkpoint's tensors by name, each read from its safetensors file (float32 numpy) only
    when asked for and not kept: a conversion through it holds one tensor at a time. Each read
    opens its file anew, so the memory map (whose touched pages count as resident) is released
    with the tensor instead of growing to the whole checkpoint."""

    def __init__(self, folder: Path):
        from safetensors import safe_open

        files = checkpoint_files(folder)
        pickled = [f.name for f in files if f.suffix != ".safetensors"]
        if pickled:
            raise ConversionError(f"{folder}: {pickled[0]} is a PyTorch pickle, which loads only "
                                  f"whole; convert the checkpoint to safetensors to stream it")
        self._file: dict = {}
        for path in files:
            with safe_open(str(path), framework="numpy") as handle:
                for name in handle.keys():
                    if name in self._file:
                        raise ConversionError(f"{path.name}: tensor {name!r} also appears in "
                                              f"another shard")
                    self._file[name] = path

    def __getitem__(self, name: str) -> np.ndarray:
        from safetensors import safe_open

        with safe_open(str(self._file[name]), framework="flax") as f:  # flax reads bfloat16 too
            return np.array(f.get_tensor(name), dtype=np.float32)

    def __contains__(self, name) -> bool:
        return name in self._file

    def __iter__(self):
        return iter(self._file)

    def __len__(self) -> int:
        return len(self._file)
