"""Layer 4, tl: TransformerLens's object API on top of the functions below.

hooked_transformer (`HookedTransformer`), hooked_encoder (`HookedEncoder`),
hooked_encoder_decoder (`HookedEncoderDecoder`, T5), hook_points
(`model.hook_dict`, `add_hook`), host_hooks (Python hook functions called back from the
compiled forward), module_views (`model.blocks[0].attn` as callable views),
tl_compat (state dicts, config toggles, TransformerLens-only methods), utils
(`jtlens.utils`: `test_prompt`, `to_numpy`, ...), patching (`jtlens.patching`: the
`get_act_patch_*` functions, which take a model, with the functional sweeps re-exported).

May import: core, io, experiments. Entry points: `HookedTransformer.from_pretrained`,
`run_with_cache`, `run_with_hooks`, `jtlens.patching.get_act_patch_*`.
"""
