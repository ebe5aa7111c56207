"""utils.test_prompt prints TransformerLens's ranks, logits and probabilities; to_numpy."""

import re

import jax.numpy as jnp
import numpy as np

from jtlens import utils
from tests.oracle import pair, torch

NUMBERS = re.compile(r"(Rank|Logit|Prob): *(-?[\d.]+)")


def _fields(text):
    return [(k, float(v)) for k, v in NUMBERS.findall(text)]


def test_test_prompt_matches_transformer_lens(capsys):
    from transformer_lens.utils import test_prompt as tl_test_prompt

    tl, model = pair("right")
    for answer in (" cat sat", ["cat", "mat", "Hello"]):
        tl_test_prompt("The cat sat on the", answer, tl, top_k=4)
        theirs = capsys.readouterr().out
        ranks = utils.test_prompt("The cat sat on the", answer, model, top_k=4)
        ours = capsys.readouterr().out
        a, b = _fields(theirs), _fields(ours)
        assert [k for k, _ in a] == [k for k, _ in b] and len(a) > 10
        for (k, x), (_, y) in zip(a, b):
            assert abs(x - y) <= (0 if k == "Rank" else 0.011), (k, x, y)  # printed to 2 decimals
        assert str(ranks).replace('"', "'") in ours
        tokens = re.findall(r"Token: \|([^|]*)\|", theirs)
        assert tokens == re.findall(r"Token: \|([^|]*)\|", ours)


def test_to_numpy():
    for x in (jnp.ones(3), torch.ones(3), [1.0, 1.0, 1.0], np.ones(3)):
        out = utils.to_numpy(x)
        assert isinstance(out, np.ndarray) and out.tolist() == [1.0, 1.0, 1.0]
