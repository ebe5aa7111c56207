"""Reading checkpoint tensors from a Hugging Face folder: safetensors first, `.bin` only safely."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
from tqdm.auto import tqdm

from jtlens.io.checkpoint_io import read_json
from jtlens.io.conversions.common import ConversionError
from jtlens.core.progress import shown

SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
TORCH_BIN, TORCH_BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"


def checkpoint_files(folder: Path) -> list[Path]:
    """The weight files of a folder, single or sharded; safetensors preferred over `.bin`."""
    for single, index in ((SAFETENSORS, SAFETENSORS_INDEX), (TORCH_BIN, TORCH_BIN_INDEX)):
        if (folder / index).exists():
            return _shards(folder, index)
        if (folder / single).exists():
            return [folder / single]
    raise ConversionError(f"{folder}: no weights found (expected {SAFETENSORS}, {SAFETENSORS_INDEX}, "
                          f"{TORCH_BIN} or {TORCH_BIN_INDEX})")


def _shards(folder: Path, index: str) -> list[Path]:
    """The shard files a sharded checkpoint's index names, each inside `folder`."""
    weight_map = read_json(folder / index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ConversionError(f"{folder / index}: no \"weight_map\" object naming the shards")
    root = os.path.normpath(os.path.abspath(folder))
    shards = []
    for name in sorted(set(map(str, weight_map.values()))):
        # An index is data: a name like ../../x.safetensors must not read files elsewhere. The
        # check is on the path as written (the hub cache links shards to blobs outside it).
        path = os.path.normpath(os.path.join(root, name))
        if os.path.isabs(name) or os.path.dirname(path) != root:
            raise ConversionError(f"{folder / index}: shard {name!r} is not a file in {folder}; "
                                  f"refusing to read outside the checkpoint folder")
        if not os.path.isfile(path):
            raise ConversionError(f"{folder}: {index} names shard {name}, which is missing")
        shards.append(folder / name)
    return shards


def read_tensors(folder: Path, progress: bool = True) -> dict[str, np.ndarray]:
    """Every tensor of the checkpoint, by name, in its stored dtype (bfloat16 via ml_dtypes)."""
    files = checkpoint_files(folder)
    tensors: dict[str, np.ndarray] = {}
    with tqdm(desc=f"reading {folder.name}", unit="tensor", disable=not shown(progress)) as bar:
        for f in files:
            read = _read_safetensors if f.suffix == ".safetensors" else _read_torch_bin
            for name, array in read(f):
                if name in tensors:
                    raise ConversionError(f"{f.name}: tensor {name!r} also appears in another shard")
                tensors[name] = array
                bar.update()
    return tensors


def _read_safetensors(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    from safetensors import safe_open

    try:
        # numpy keeps each stored dtype (int64 included, which jax would narrow); only bfloat16,
        # which numpy lacks, is read through the flax framework.
        with safe_open(str(path), framework="numpy") as f, \
                safe_open(str(path), framework="flax") as bf16:
            for k in f.keys():
                yield k, (np.asarray(bf16.get_tensor(k)) if f.get_slice(k).get_dtype() == "BF16"
                          else f.get_tensor(k))
    except ConversionError:
        raise
    except Exception as err:  # safetensors raises its own SafetensorError (and OSError)
        raise _unreadable(path, err) from None


def _unreadable(path: Path, err: BaseException) -> ConversionError:
    return ConversionError(f"{path}: not a readable safetensors file ({_first_line(err)}); "
                           f"the file may be truncated: download it again")


def _read_torch_bin(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    import pickle

    try:
        import torch
    except ImportError as err:
        raise ConversionError(f"{path.name} is a PyTorch pickle: install torch (pip install "
                              f"'jtlens[torch]') or convert the checkpoint to safetensors") from err
    # weights_only: a pickle may carry code; only tensors are accepted.
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        raise ConversionError(f"{path}: refused by torch.load(weights_only=True), which reads only "
                              f"tensors ({_first_line(err)}); use a safetensors checkpoint") from None
    if not isinstance(state, dict):
        raise ConversionError(f"{path}: holds a {type(state).__name__}, not a state dict of tensors")
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            raise ConversionError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor")
        v = v.detach()
        yield k, (v.float() if v.is_floating_point() else v).numpy()


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


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
            try:
                with safe_open(str(path), framework="numpy") as handle:
                    names = list(handle.keys())
            except Exception as err:  # safetensors raises its own SafetensorError (and OSError)
                raise _unreadable(path, err) from None
            for name in names:
                if name in self._file:
                    raise ConversionError(f"{path.name}: tensor {name!r} also appears in "
                                          f"another shard")
                self._file[name] = path

    def __getitem__(self, name: str) -> np.ndarray:
        """The tensor in its stored dtype (bfloat16 through ml_dtypes), as `read_tensors` gives."""
        from safetensors import safe_open

        path = self._file[name]
        with safe_open(str(path), framework="numpy") as f:
            if f.get_slice(name).get_dtype() != "BF16":
                return f.get_tensor(name)
        with safe_open(str(path), framework="flax") as f:  # numpy has no bfloat16 of its own
            return np.asarray(f.get_tensor(name))

    def __contains__(self, name) -> bool:
        return name in self._file

    def __iter__(self):
        return iter(self._file)

    def __len__(self) -> int:
        return len(self._file)
