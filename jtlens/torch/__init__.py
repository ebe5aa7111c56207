"""Layer 5, torch: TransformerLens's API answering in torch tensors, for code that computes on
the outputs with torch (`logits.softmax(dim=-1)`, `act[:, 0] = 0` in a hook).

    from jtlens.torch import HookedTransformer, utils, patching   # for `from transformer_lens ...`

hooked_transformer (the model), convert (DLPack both ways, `TorchView`), patching (sweeps with
torch metrics, traced by traced_metric where it can), utils, evals, hook_points. May import: tl
and below, and torch (an optional extra, imported only here). Nothing in jtlens imports it.
"""

from jtlens.core.config import Config as Config  # noqa: F401
from jtlens.core.config import HookedTransformerConfig as HookedTransformerConfig  # noqa: F401
from jtlens.core.hooks import HookPoint as HookPoint  # noqa: F401
from jtlens.torch.convert import ActivationCache as ActivationCache  # noqa: F401
from jtlens.torch.convert import FactoredMatrix as FactoredMatrix  # noqa: F401
from jtlens.torch.hooked_transformer import HookedTransformer as HookedTransformer  # noqa: F401
from jtlens.torch import evals, hook_points, patching, utils  # noqa: F401,E402
