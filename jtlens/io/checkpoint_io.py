"""Checkpoint files: crash-safe folders, and JSON reading whose errors name the file.

`write_folder(dest, fill, overwrite)` lets `fill(tmp)` write every file into a temporary folder
in dest's parent, records a manifest (each file's size and sha256) last, fsyncs everything and
renames the folder into place. A kill at any moment leaves `dest` as the old checkpoint or the
new one, never a mix; a folder without a matching manifest is named incomplete by
`check_manifest`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

MANIFEST = "jtlens_manifest.json"


def read_json(path) -> dict:
    """A JSON object from `path`; errors name the file."""
    from jtlens.core.params import ConversionError

    try:
        data = json.loads(Path(path).read_text())
    except UnicodeDecodeError:
        raise ConversionError(f"{path}: not a text file (expected JSON)") from None
    except json.JSONDecodeError as err:
        raise ConversionError(f"{path}: invalid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: expected a JSON object, found a {type(data).__name__}")
    return data


class IncompleteCheckpoint(ValueError):
    """A checkpoint folder whose files do not match its manifest (an interrupted save or a
    partial copy)."""


def _fsync(path: Path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(folder: Path):
    """Record each file's size and sha256 in MANIFEST (written and fsynced last)."""
    entries = {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
               for p in _files(folder)}
    path = folder / MANIFEST
    path.write_text(json.dumps({"files": entries}, indent=1))
    _fsync(path)


def check_manifest(folder: Path, hashed: dict | None = None):
    """Raise IncompleteCheckpoint unless every file of the manifest is present with its size.

    hashed: {relative name: bytes already read by the caller}, checked against the sha256 too
    (no second read of a large file)."""
    path = folder / MANIFEST
    if not path.exists():
        raise IncompleteCheckpoint(f"{folder}: incomplete checkpoint, {MANIFEST} is missing (the "
                                   f"save was interrupted, or the folder was copied in part); "
                                   f"convert or save it again")
    try:
        files = json.loads(path.read_text())["files"]
        sizes = {name: int(entry["bytes"]) for name, entry in files.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise IncompleteCheckpoint(f"{path}: unreadable manifest ({type(err).__name__}: {err}); "
                                   f"save the model again") from None
    for name, entry in files.items():
        f = folder / name
        if not f.is_file():
            raise IncompleteCheckpoint(f"{folder}: incomplete checkpoint, {name} is missing")
        if f.stat().st_size != sizes[name]:
            raise IncompleteCheckpoint(f"{f}: {f.stat().st_size} bytes, the manifest says "
                                       f"{sizes[name]}; the file is truncated or was replaced")
        if name in (hashed or {}) and hashlib.sha256(hashed[name]).hexdigest() != entry.get("sha256"):
            raise IncompleteCheckpoint(f"{f}: contents do not match the manifest's sha256; the "
                                       f"file is corrupted or was replaced")


def check_destination(dest: Path, overwrite: bool):
    """Refuse a destination that is a file, or a non-empty folder without overwrite=True."""
    if dest.exists() and not dest.is_dir():
        raise FileExistsError(f"{dest} is a file; give a folder path to write the model into")
    if dest.is_dir() and not (os.access(dest, os.W_OK) and dest.stat().st_mode & 0o222):
        # The swap renames a new folder over it, which its parent allows: the mode is the owner's
        # word that it must not change (checked by bits too, as root passes os.access).
        raise PermissionError(f"{dest} is read-only; make it writable (chmod u+w) or choose "
                              f"another folder")
    if dest.is_dir() and any(dest.iterdir()) and not overwrite:
        raise FileExistsError(f"{dest} is not empty; choose a new folder or pass overwrite=True "
                              f"(--overwrite) to replace it")


def write_folder(dest, fill: Callable[[Path], None], overwrite: bool = False) -> Path:
    """Write a folder atomically: `fill(tmp)` writes the files, then the manifest is added and the
    folder renamed onto `dest` (replacing it only when `overwrite`)."""
    dest = Path(dest).absolute()
    check_destination(dest, overwrite)
    parent = dest.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=parent))
    except OSError as err:
        raise OSError(f"cannot write in {parent}: {err.strerror or err}") from None
    try:
        fill(tmp)
        for f in _files(tmp):
            _fsync(f)
        write_manifest(tmp)
        _fsync(tmp)
        _swap_in(tmp, dest)
        _fsync(parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _swap_in(tmp: Path, dest: Path):
    """Rename tmp onto dest. An existing non-empty dest is exchanged in one step where the OS
    can (Linux renameat2); elsewhere the old folder steps aside first, leaving a short window
    in which dest is absent (never mixed)."""
    if not dest.exists() or not any(dest.iterdir()):
        os.replace(tmp, dest)  # an empty folder is replaced atomically
        return
    if _exchange(tmp, dest):
        shutil.rmtree(tmp)  # tmp now holds the old checkpoint
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
    os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)


_RENAME_EXCHANGE, _AT_FDCWD = 2, -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    return renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0
