"""A GGUF file's tokenizer, built from its `tokenizer.ggml.*` metadata without torch.

transformers' own `AutoTokenizer.from_pretrained(..., gguf_file=...)` reads the file through a
reader that imports torch, which jtlens does not depend on. The metadata is read here with
`gguf_file` instead, and handed to transformers' pure-Python GGUF tokenizer builders (the
ones `AutoTokenizer` itself uses), so the tokenizer is the same, token for token.
"""

from __future__ import annotations

from jtlens.io.conversions.common import ConversionError


def _builders():
    """(metadata key mapping, convert_gguf_tokenizer) from the installed transformers."""
    try:  # transformers >= 5
        from transformers.integrations.gguf.gguf_tokenizer_mapping import (
            GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer)
    except ImportError:  # transformers 4.x kept them in one module
        from transformers.integrations.ggml import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer
    return GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer


# The special tokens a tokenizer config names, and the metadata key holding each one's id.
SPECIAL_TOKENS = {"bos_token": "bos_token_id", "eos_token": "eos_token_id",
                  "unk_token": "unknown_token_id", "pad_token": "padding_token_id"}


def tokenizer_metadata(reader) -> tuple[str, dict, dict]:
    """(architecture, tokenizer dict, tokenizer config) under the names transformers' GGUF
    tokenizer builders read, from a `read_gguf` file."""
    mapping, _ = _builders()
    values = {key: value for key, value in reader.metadata.items() if key.startswith("tokenizer.")}
    grouped = {group: {name: values[f"tokenizer.{key}"] for key, name in renames.items()
                       if f"tokenizer.{key}" in values}
               for group, renames in mapping.items()}
    tokenizer, config = grouped["tokenizer"], grouped["tokenizer_config"]
    if tokenizer.get("tokenizer_type") == "llama":
        # llama.cpp adds BOS to a sentencepiece vocabulary unless the file says otherwise.
        config.setdefault("add_bos_token", True)
    for name, key in SPECIAL_TOKENS.items():
        token_id = values.get(f"tokenizer.ggml.{key}")
        config[name] = tokenizer["tokens"][token_id] if token_id is not None else None
    return reader.metadata["general.architecture"], tokenizer, config


def gguf_tokenizer(reader):
    """The fast tokenizer a GGUF file describes (a `PreTrainedTokenizerFast`), from the file's
    `read_gguf` file (the one its conversion read)."""
    from transformers import PreTrainedTokenizerFast

    arch, tokenizer, config = tokenizer_metadata(reader)
    _, convert = _builders()
    try:
        backend, extra = convert(arch, tokenizer)
    except (ValueError, KeyError) as err:
        raise ConversionError(f"{reader.path}: cannot build its tokenizer "
                              f"(tokenizer.ggml.model={tokenizer.get('tokenizer_type')!r}): "
                              f"{err}") from None
    return PreTrainedTokenizerFast(tokenizer_object=backend, **config, **extra)
