"""Hugging Face checkpoints -> jtlens (Config, params).

Each family module exposes `config_from_hf(hf_config: dict) -> Config` and
`params_from_hf(reader: TensorReader, cfg) -> dict`; `ARCHITECTURES` maps the checkpoint's
`architectures[0]` to its module. Conversions are strict: every tensor is used or deliberately
ignored, every param filled, every shape checked.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from jtlens.io.checkpoint_io import read_json
from jtlens.io.conversions.common import ConversionError, TensorReader
from jtlens.core.params import check_and_cast, check_shapes, param_shapes

ARCHITECTURES = {
    "GPT2LMHeadModel": "gpt2",
    "GPTNeoXForCausalLM": "neox",
    "GPTJForCausalLM": "gptj",
    "GPTNeoForCausalLM": "gpt_neo",
    "OPTForCausalLM": "opt",
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "QWenLMHeadModel": "qwen",
    "Qwen2ForCausalLM": "llama",
    "Qwen3ForCausalLM": "llama",
    "GemmaForCausalLM": "llama",
    "Gemma2ForCausalLM": "llama",
    "Gemma3ForCausalLM": "llama",
    "Gemma3ForConditionalGeneration": "llama",
    "Phi3ForCausalLM": "llama",
    "PhiForCausalLM": "phi",
    "BloomForCausalLM": "bloom",
    "OlmoForCausalLM": "llama",
    "Olmo2ForCausalLM": "llama",
    "Olmo3ForCausalLM": "llama",
    "ApertusForCausalLM": "llama",
    "MixtralForCausalLM": "llama",
    "OlmoeForCausalLM": "llama",
    "GptOssForCausalLM": "llama",
    "Qwen2MoeForCausalLM": "llama",
    "Qwen3MoeForCausalLM": "llama",
    "BertForMaskedLM": "bert",
    "BertForPreTraining": "bert",
    "BertModel": "bert",
    "DistilBertForMaskedLM": "distilbert",
    "DistilBertModel": "distilbert",
    "T5ForConditionalGeneration": "t5",
}


def family(hf_config: dict):
    """The conversion module for a Hugging Face config dict."""
    arch = (hf_config.get("architectures") or [None])[0]
    if arch not in ARCHITECTURES:
        raise ConversionError(f"unsupported architecture {arch!r} (model_type "
                              f"{hf_config.get('model_type')!r}); supported: {sorted(ARCHITECTURES)}")
    return importlib.import_module(f"jtlens.conversions.{ARCHITECTURES[arch]}")


def convert_folder(folder, progress: bool = True, hf_overrides: dict | None = None,
                   stream=None):
    """(cfg, params) from a Hugging Face folder (config.json + safetensors/.bin weights);
    `hf_overrides` replace config.json keys before conversion.

    `stream(cfg)`, when given, returns the function that takes each converted layer
    (`stack(n_layers, per_layer)`, see `TensorReader`) and gives params["blocks"]; tensors are
    then read one at a time (safetensors only) and the other params come back as checked numpy.
    """
    from jtlens.io.conversions.checkpoint import LazyTensors, read_tensors

    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise ConversionError(f"{folder}: no config.json (is this a Hugging Face model folder?)")
    hf_config = read_json(folder / "config.json")
    unknown = sorted(set(hf_overrides or {}) - set(hf_config))
    if unknown:
        raise TypeError(f"unknown option {unknown[0]!r}: neither a jtlens.Config field nor a key of "
                        f"{folder / 'config.json'}")
    hf_config.update(hf_overrides or {})
    module = family(hf_config)
    try:
        cfg = module.config_from_hf(hf_config)
    except KeyError as err:
        raise ConversionError(f"{folder / 'config.json'}: missing key {err.args[0]!r}, which a "
                              f"{hf_config['architectures'][0]} config needs") from None
    except (TypeError, ValueError) as err:  # a wrong-typed value, or a Config that fails validation
        raise ConversionError(f"{folder / 'config.json'}: {err}") from None
    tensors = LazyTensors(folder) if stream else read_tensors(folder, progress)
    reader = TensorReader(tensors, str(folder), stack=stream and stream(cfg),
                          tied_embeddings=hf_config.get("tie_word_embeddings", True))
    params = module.params_from_hf(reader, cfg)
    reader.finish()
    if not stream:
        return cfg, check_and_cast(params, cfg, dtype="float32")
    blocks = params.pop("blocks")
    outer = {k: v for k, v in param_shapes(cfg).items() if k != "blocks"}
    return cfg, dict(check_shapes(params, outer), blocks=blocks)
