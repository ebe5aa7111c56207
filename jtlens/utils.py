"""TransformerLens's `utils` helpers: test_prompt, to_numpy, and re-exports of get_act_name,
lm_cross_entropy_loss and Slice."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import jax
import numpy as np

from jtlens.components import lm_cross_entropy_loss
from jtlens.hooks import get_act_name
from jtlens.slice import Slice

__all__ = ["test_prompt", "to_numpy", "get_act_name", "lm_cross_entropy_loss", "Slice"]


def to_numpy(x) -> np.ndarray:
    """A numpy array from a jax/numpy array, torch tensor, list or scalar."""
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    if isinstance(x, jax.Array):
        return np.asarray(jax.device_get(x))
    return np.asarray(x)


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
