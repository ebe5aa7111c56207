"""`jtlens.utils` (TransformerLens's `utils`) taking and returning torch tensors."""

from jtlens.tl import utils as _utils
from jtlens.torch.convert import torch_functions

__all__ = list(_utils.__all__)
# No arrays out, or numpy by design.
globals().update(torch_functions(_utils, __all__, as_is=("to_numpy", "Slice", "get_act_name", "get_device")))
