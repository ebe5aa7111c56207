"""Layer 3, experiments: what a researcher does with a model, as functions of `(params, cfg)`.

patching/ (activation sweeps, their plans, attribution and path patching), grads (gradients
with respect to activations), masks (differentiable component masks), probes, steering,
train, generation and sampling, head_detector, evals. Nothing here takes or builds a
`HookedTransformer` (a few functions accept any object with `.params` and `.cfg`), so each is a
plain JAX function that jit, vmap and grad see through.

One folder rather than one per topic: these modules are small, share grads and sampling, and
form one layer; the families above grads/sampling do not import each other (`lint-imports`'
independence contract).

May import: core, io. Entry points: `patching.sweep.activation_sweep`, `grads.grad_cache`,
`generation.generate`, `train.train`, `masks`, `steering`.
"""
