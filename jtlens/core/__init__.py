"""Layer 1, core: the model as pure functions of `(params, tokens, cfg, hooks)`.

What lives here: `Config` (config), the params schema and initialisation (params), the hooks
pytree and hook-name parsing (hooks), the forward in pieces (pieces: embed, attention, MLP,
norms, unembed; engine: one pass through them; forward: `forward`, `forward_with_cache`,
`forward_with_kv`; hook_catalogue: the hook names a config has), `ActivationCache` and its
analyses (cache, cache_analysis, slice), the key/value cache (kv_cache), input checks (checks),
tokenizer helpers (tokens), weight processing (weights), the decode layout, `FactoredMatrix`,
when to show progress (progress) and XLA's persistent compilation cache (compilation_cache).

May import: jax, numpy and the other core modules only; nothing else in jtlens, and never torch.
Entry points: `forward`, `forward_with_cache`, `Hooks`, `Config`, `init_params`, `hook_names`.
"""
