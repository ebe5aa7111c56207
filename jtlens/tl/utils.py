"""TransformerLens's `utils` helpers: test_prompt, to_numpy, and re-exports of get_act_name,
lm_cross_entropy_loss and Slice."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import jax
import numpy as np

from jtlens.core.components import lm_cross_entropy_loss
from jtlens.core.hooks import get_act_name
from jtlens.core.slice import Slice

__all__ = ["test_prompt", "to_numpy", "get_act_name", "lm_cross_entropy_loss", "Slice",
           "get_attention_mask", "get_corner", "remove_batch_dim", "transpose", "is_square", "get_device",
           "is_lower_triangular", "override_or_use_default_value"]


def to_numpy(x) -> np.ndarray:
    """A numpy array from a jax/numpy array, torch tensor, list or scalar."""
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    if isinstance(x, jax.Array):
        return np.asarray(jax.device_get(x))
    return np.asarray(x)


def get_attention_mask(tokenizer, tokens, prepend_bos: bool, padding_side: Optional[str] = None):
    """1/0 mask [batch, pos] of the non-padding tokens: only trailing pads (right padding) or
    leading pads (left padding) count, and a BOS that shares the pad id stays attended."""
    tokens = np.asarray(tokens)
    mask = np.ones_like(tokens)
    if tokenizer is None:
        return jax.numpy.asarray(mask)
    side = tokenizer.padding_side if padding_side is None else padding_side
    not_pad = tokens != tokenizer.pad_token_id
    if side == "right":
        mask[np.cumsum(not_pad[..., ::-1], -1)[..., ::-1] == 0] = 0
    else:
        leading = np.cumsum(not_pad, -1) == 0
        mask[leading] = 0
        if prepend_bos and tokenizer.bos_token_id == tokenizer.pad_token_id:
            rows = np.arange(mask.shape[0])
            mask[rows, leading.sum(-1) - 1] = 1
    return jax.numpy.asarray(mask)


def get_corner(x, n: int = 3):
    """The top-left n x ... x n corner of an array (or a FactoredMatrix)."""
    if hasattr(x, "get_corner"):
        return x.get_corner(n)
    return x[tuple(slice(n) for _ in range(x.ndim))]


def remove_batch_dim(x):
    """x without its leading axis when that axis has size 1, else x."""
    return x[0] if x.shape[0] == 1 else x


def transpose(x):
    """Swap the last two axes."""
    return jax.numpy.swapaxes(x, -1, -2)


def get_device() -> str:
    """JAX's default platform in TransformerLens's words: "cuda" for a GPU, else "tpu" / "cpu"
    (what `from_pretrained(..., device=)` and `model.to` accept)."""
    platform = jax.devices()[0].platform
    return "cuda" if platform == "gpu" else platform


def is_square(x) -> bool:
    """Whether x is a 2-D square matrix."""
    return np.ndim(x) == 2 and np.shape(x)[0] == np.shape(x)[1]


def is_lower_triangular(x) -> bool:
    """Whether x is a square matrix with nothing above its diagonal."""
    if not is_square(x):
        return False
    x = to_numpy(x)
    return bool((x == np.tril(x)).all())


def override_or_use_default_value(default_flag, override=None):
    """`override` unless it is None, else `default_flag`."""
    return default_flag if override is None else override


def test_prompt(prompt: str, answer: Union[str, Sequence[str]], model,
                prepend_space_to_answer: bool = True, print_details: bool = True,
                prepend_bos: Optional[bool] = None, top_k: int = 10):
    """Print how the model ranks `answer` after `prompt`: its rank, logit and probability at
    each answer token and the top-k alternatives (TransformerLens's test_prompt).
    Returns the ranks: [(answer str token, rank)] per answer position (one answer), or per
    position a list over answers (several answers: their first tokens only)."""
    answers = [answer] if isinstance(answer, str) else list(answer)
    several = len(answers) > 1
    if prepend_space_to_answer:
        answers = [a if a.startswith(" ") else " " + a for a in answers]
    bos = {} if prepend_bos is None else {"prepend_bos": prepend_bos}
    prompt_tokens = np.asarray(model.to_tokens(prompt, **bos))
    answer_tokens = np.asarray(model.to_tokens(answers, prepend_bos=False))
    if several:
        answer_tokens = answer_tokens[:, :1]
    tokens = np.concatenate([np.repeat(prompt_tokens, len(answers), 0), answer_tokens], axis=1)
    prompt_str = model.to_str_tokens(prompt, **bos)
    answer_strs = [model.to_str_tokens(a, prepend_bos=False) for a in answers]
    n_prompt, n_answer = len(prompt_str), 1 if several else len(answer_strs[0])
    if print_details:
        print("Tokenized prompt:", prompt_str)
        print("Tokenized answers:" if several else "Tokenized answer:",
              answer_strs if several else answer_strs[0])
    logits = np.asarray(model(tokens), np.float64)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    ranks = []
    for index in range(n_prompt, n_prompt + n_answer):
        targets = tokens[:, index]
        strs = [a[index - n_prompt] for a in answer_strs]
        p = probs[:, index - 1]
        order = np.argsort(-p, axis=-1, kind="stable")
        rank = [int(np.where(order[i] == targets[i])[0][0]) for i in range(len(answers))]
        ranks.append(list(zip(strs, rank)))
        if print_details:
            print(f"Performance on answer token{'s' if several else ''}:")
            for i in range(len(answers)):
                print(f"Rank: {rank[i]: <8} Logit: {logits[i, index - 1, targets[i]]:5.2f} "
                      f"Prob: {p[i, targets[i]]:6.2%} Token: |{strs[i]}|")
            for k in range(top_k):
                tok = order[0, k]
                print(f"Top {k}th token. Logit: {logits[0, index - 1, tok]:5.2f} Prob: "
                      f"{p[0, tok]:6.2%} Token: |{model.to_string(int(tok))}|")
    result = ranks if several else [r[0] for r in ranks]
    if print_details:
        print("Ranks of the answer tokens:", result)
    return result
