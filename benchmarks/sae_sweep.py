"""Feature ablation sweep on SmolLM2-135M: every feature active on the Eiffel Tower prompt of a
residual SAE (blocks.15.hook_resid_post, TopK k=32, 2304 latents), zeroed at all positions,
metric logit(" Paris") - logit(" Rome"); the error term keeps the unedited run exact.

    python -m benchmarks.sae_sweep [--limit 64]

jtlens: `feature_ablation_sweep`, one compiled program (vmapped in chunks of 16).
SAELens: HookedSAETransformer (TransformerLens 3.9) with a Python loop over features, a hook on
`hook_sae_acts_post` per run, as its tutorials do. Same weights on both sides; the script checks
the effects agree before it prints the times.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from benchmarks.sae_train import HOOK, models


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=64, help="features in SAELens's loop (it is slow)")
    args = ap.parse_args()
    import sae_lens
    import torch

    from jtlens.sparse import SAE, SAEConfig
    from jtlens.sparse.features import active_features, feature_ablation_sweep, feature_acts
    from jtlens.sparse.sae import param_shapes

    tl, model = models()
    theirs = sae_lens.HookedSAETransformer(tl.cfg)
    theirs.load_state_dict(tl.state_dict(), strict=False)
    theirs.eval()
    cfg = SAEConfig(576, 2304, "topk", k=32, metadata={"hook_name": HOOK})
    rng = np.random.default_rng(0)
    sae = SAE({n: jax.numpy.asarray(rng.standard_normal(s).astype(np.float32) * 0.05)
               for n, s in param_shapes(cfg).items()}, cfg)
    folder = Path(tempfile.mkdtemp()) / "sae"
    sae.save_model(folder)
    t_sae = sae_lens.SAE.load_from_disk(str(folder))
    toks = model.to_tokens("The Eiffel Tower is located in the city of")
    paris, rome = model.to_single_token(" Paris"), model.to_single_token(" Rome")

    def metric(logits):
        return logits[0, -1, paris] - logits[0, -1, rome]

    feats = active_features(feature_acts(model.params, toks, model.cfg, sae))
    t0 = time.perf_counter()
    ours = np.asarray(feature_ablation_sweep(model.params, toks, model.cfg, sae, metric, features=feats))
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    np.asarray(feature_ablation_sweep(model.params, toks, model.cfg, sae, metric, features=feats))
    warm = time.perf_counter() - t0

    t_toks = torch.tensor(np.asarray(toks))
    theirs.add_sae(t_sae, use_error_term=True)
    loop = feats[: args.limit]
    effects = []
    t0 = time.perf_counter()
    for f in loop:
        def ablate(acts, hook, f=int(f)):
            acts[:, :, f] = 0.0
            return acts

        with torch.no_grad():
            logits = theirs.run_with_hooks(t_toks, fwd_hooks=[(f"{HOOK}.hook_sae_acts_post", ablate)])
        effects.append(float(logits[0, -1, paris] - logits[0, -1, rome]))
    per_feature = (time.perf_counter() - t0) / len(loop)
    theirs.reset_saes()
    diff = float(np.abs(np.asarray(effects) - ours[: len(loop)]).max())
    assert diff < 1e-3, f"the sweeps disagree by {diff}"
    saelens_all = per_feature * len(feats)
    print(f"SmolLM2-135M, {HOOK}, {len(feats)} active features, {toks.shape[1]} tokens, CPU; "
          f"effects agree to {diff:.1e}")
    print(f"jtlens one program: {warm:.2f} s warm ({first:.2f} s with compile) | SAELens loop: "
          f"{per_feature * 1e3:.0f} ms/feature, {saelens_all:.1f} s for all (timed on {len(loop)}) | "
          f"{saelens_all / warm:.1f}x warm, {saelens_all / first:.1f}x with compile")


if __name__ == "__main__":
    main()
