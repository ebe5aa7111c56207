"""`jtlens.evals` (TransformerLens's `evals.induction_loss`) taking and returning torch tensors."""

from jtlens.experiments import evals as _evals
from jtlens.torch.convert import torch_functions

__all__ = ["induction_loss"]
globals().update(torch_functions(_evals, __all__))
