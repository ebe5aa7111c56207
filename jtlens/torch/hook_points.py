"""`from jtlens.torch.hook_points import HookPoint` for `from transformer_lens.hook_points import
HookPoint`: the type of a hook function's second argument."""

from jtlens.core.hooks import HookPoint as HookPoint  # noqa: F401
