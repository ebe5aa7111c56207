"""Reproduce the embedded default model "jtlens-tiny" from scratch (about 11 min on 2 CPU cores).

    python scripts/train_tiny.py [--out jtlens/assets/jtlens-tiny] [--steps 10000]

Corpus: every docstring in the running Python's standard library (plus the `pydoc_data` topic
texts), so it installs offline with CPython. A byte-level BPE tokenizer is trained on it with
Hugging Face `tokenizers`, then a 2-layer GPT-2-style model (tied embeddings, as GPT-2) with
`jtlens.train`. What made induction heads form within this budget (earlier attempts with a
4096-token vocabulary, 256-token windows and untied embeddings did not form them in 2000 steps):
a 1024-token vocabulary, 64-token windows, 10000 steps, and half of the rows repeating a span of
their own text. The result is saved in jtlens's native format (`jtlens.loading.save_converted`),
with the training curve and the induction scores in `training.json`.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax
import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

import jtlens
from jtlens.experiments.head_detector import induction_scores
from jtlens.experiments.sparse.corpus import stdlib_docstrings
from jtlens.experiments.train import train

EOT = "<|endoftext|>"
CFG = jtlens.Config(n_layers=2, d_model=128, n_heads=4, d_head=32, d_mlp=512, d_vocab=1024,
                    n_ctx=64, act_fn="gelu_new", normalization_type="LN",
                    model_name="jtlens-tiny", original_architecture="GPT2LMHeadModel")


def train_tokenizer(docs: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A GPT-2-style byte-level BPE with one special token (BOS = EOS = PAD)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(docs, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT,
                                   pad_token=EOT, unk_token=EOT)


def token_stream(tokenizer, docs: list[str]) -> np.ndarray:
    """All documents as one int32 stream, each preceded by the end-of-text token."""
    eot = tokenizer.convert_tokens_to_ids(EOT)
    ids = tokenizer(docs, add_special_tokens=False)["input_ids"]
    return np.concatenate([np.asarray([eot] + row, np.int32) for row in ids])


def batches(data: np.ndarray, bos: int, batch: int, n_ctx: int, seed: int, repeat: float = 0.0):
    """Random windows, each starting with BOS as at inference (TransformerLens prepends it).

    A `repeat` fraction of rows say a span twice (BOS, span, span, what follows the span), to
    reward copying from context: this is what induction heads are for.
    """
    rng = np.random.default_rng(seed)
    while True:
        rows = []
        for start in rng.integers(0, len(data) - n_ctx, batch):
            window = data[start:start + n_ctx - 1]
            if rng.random() < repeat:
                k = rng.integers(8, (n_ctx - 1) // 2 + 1)
                window = np.concatenate([window[:k], window])[:n_ctx - 1]
            rows.append(np.concatenate([[bos], window]))
        yield jax.numpy.asarray(np.stack(rows).astype(np.int32))


def tie_embeddings(params: dict) -> dict:
    """The unembedding as the embedding's transpose (GPT-2's weight tying). Training through this
    makes copying a token a matter of one d_model x d_model map, which speeds up induction."""
    return {**params, "unembed": {**params["unembed"], "W_U": params["embed"]["W_E"].T}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = pathlib.Path(__file__).resolve().parents[1]
    ap.add_argument("--out", default=str(here / "jtlens" / "assets" / "jtlens-tiny"))
    ap.add_argument("--steps", type=int, default=10000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=float, default=0.5, help="fraction of rows with a repeat")
    args = ap.parse_args()
    t0 = time.time()

    docs = stdlib_docstrings()
    tokenizer = train_tokenizer(docs, CFG.d_vocab)
    data = token_stream(tokenizer, docs)
    split = int(0.98 * len(data))
    train_data, val_data = data[:split], data[split:]
    print(f"{len(docs)} documents, {len(data)} tokens ({time.time() - t0:.0f}s)")

    bos = tokenizer.bos_token_id
    params = jtlens.init_params(CFG, jax.random.PRNGKey(args.seed))
    params, losses = train(params, CFG, batches(train_data, bos, args.batch, CFG.n_ctx, args.seed,
                                                args.repeat),
                           steps=args.steps, lr=args.lr, warmup=min(200, args.steps // 10),
                           weight_decay=0.1, loss_fn=lambda p, b: jtlens.forward(
                               tie_embeddings(p), b, CFG, return_type="loss"))
    params = tie_embeddings(params)
    val = [float(jtlens.forward(params, b, CFG, return_type="loss"))
           for b, _ in zip(batches(val_data, bos, args.batch, CFG.n_ctx, args.seed + 1), range(8))]

    from jtlens.io.loading import save_converted

    out = pathlib.Path(args.out)
    save_converted(out, CFG, params, tokenizer, overwrite=True)  # refreshes the shipped model
    summary = dict(corpus="CPython stdlib docstrings + pydoc_data topics", documents=len(docs),
                   tokens=int(len(data)), steps=args.steps, batch=args.batch, lr=args.lr,
                   repeat=args.repeat,
                   seed=args.seed, final_train_loss=float(np.mean(losses[-50:])),
                   val_loss=float(np.mean(val)), seconds=round(time.time() - t0),
                   induction_scores=np.round(np.asarray(induction_scores(
                       jtlens.HookedTransformer(CFG, params, tokenizer), seq_len=20)), 3).tolist(),
                   losses=[round(x, 4) for x in losses])
    (out / "training.json").write_text(json.dumps(summary))
    print(f"train loss {summary['final_train_loss']:.3f}, val loss {summary['val_loss']:.3f}, "
          f"induction scores per layer and head {summary['induction_scores']}, "
          f"{summary['seconds']}s -> {out}")


if __name__ == "__main__":
    main()
