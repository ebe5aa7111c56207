"""`jtlens.utils` (TransformerLens's `utils`) taking and returning torch tensors."""

from jtlens.tl import utils as _utils
from jtlens.torch.convert import torch_function

__all__ = list(_utils.__all__)
_AS_IS = ("to_numpy", "Slice", "get_act_name", "get_device")  # no arrays out, or numpy by design
globals().update({name: getattr(_utils, name) if name in _AS_IS
                  else torch_function(getattr(_utils, name)) for name in __all__})
