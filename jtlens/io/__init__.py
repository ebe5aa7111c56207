"""Layer 2, io: everything that turns files into `(Config, params)` and places them on devices.

conversions/ (one module per Hugging Face family, GGUF, TransformerLens state dicts; `python -m
jtlens.conversions` writes jtlens's format), native (jtlens's own saved format), checkpoint_io
(atomic folder writes, manifests), gguf_models (packaged GGUFs and the conversion cache),
loading (`load`: any name or path -> cfg, params, tokenizer), streaming (layer-by-layer loads
onto a mesh), sharding (placement rules as data), saved_tokenizer (a saved tokenizer.json read
without importing transformers).

May import: core. Entry points: `loading.load`, `native.save_converted`,
`conversions.convert_folder`, `sharding.shard_params`.
"""
