"""circuit-tracer 0.5.0's attribution graph in a subprocess, for the parity test and the benchmark.

    result = run(model_folder, transcoder_folder, tokens, batch_size=32)   # None without .ct
    result["adjacency"], result["active_features"], result["first_s"], ...

circuit-tracer pins transformers <= 4.57.3 and the test environment has 5.x, so `make test`
installs it with its transformers, tokenizers, huggingface-hub, datasets and TransformerLens 3.2.1
into `.ct` (`--no-deps --target`), and this file, run by the same python with `.ct` first on
PYTHONPATH, is its worker (torch and the rest come from the main environment). The worker loads
the Hugging Face folder into circuit-tracer's TransformerLens replacement model with
TransformerLens's default processing (fold_ln, centring: the weights jtlens loads, so that
`ln2.hook_normalized` is the MLP input on both sides), reads the transcoders that jtlens wrote in
circuit-tracer's format with circuit-tracer's own loaders, runs `attribute` on the token ids
(twice, timed) and saves the graph to an .npz.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CT = ROOT / ".ct"


def available() -> bool:
    return (CT / "circuit_tracer").is_dir()


def run(model_folder, transcoder_folder, tokens, **options) -> dict | None:
    """circuit-tracer's graph of `tokens` (ids, the first a special token, as circuit-tracer
    prepends one otherwise): edges (its feature and logit rows, as AttributionGraph.edges),
    adjacency (unless dense=False: n_nodes^2 floats), active_features [n, 3] (selected ones only),
    activation_values, logit_tokens, logit_probabilities, and first_s / second_s / peak_GiB
    (loaded_GiB: the peak before attribute, loading the model and transcoders).
    options: batch_size, max_feature_nodes, update_interval, max_n_logits, desired_logit_prob,
    threads, dense, repeat
    (2: time a second call). None when `.ct` is absent."""
    if not available():
        return None
    env = dict(os.environ, PYTHONPATH=str(CT), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "graph.npz"
        args = dict(options, model=str(model_folder), transcoders=str(transcoder_folder),
                    tokens=[int(t) for t in np.asarray(tokens)], out=str(out))
        proc = subprocess.run([sys.executable, __file__, json.dumps(args)], env=env,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            killed = " (killed: out of memory?)" if proc.returncode == -9 else ""
            raise RuntimeError(f"the circuit-tracer worker failed with exit status "
                               f"{proc.returncode}{killed}:\n{proc.stderr[-3000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result.update(np.load(out))
        return result


# ----------------------------------------------------------------------------- in the subprocess

def _model(folder: str, transcoders):
    import torch
    import transformer_lens.loading_from_pretrained as lp
    from circuit_tracer.replacement_model.replacement_model_transformerlens import (
        TransformerLensReplacementModel)
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

    hf = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
    cfg = lp.get_pretrained_model_config(folder, fold_ln=True, device="cpu", dtype=torch.float32)
    # transformers 5 writes rope_theta inside rope_parameters, which 4.57 does not read (it would
    # take its default 10000): carry it over, and refuse scaled RoPE rather than misread it
    rope = json.loads((Path(folder) / "config.json").read_text()).get("rope_parameters")
    if rope is not None:
        if rope.get("rope_type", "default") != "default":
            raise ValueError(f"{folder}: rope_parameters {rope} (only default RoPE is carried over)")
        cfg.rotary_base = rope["rope_theta"]
    state = lp.get_pretrained_state_dict(folder, cfg, hf_model=hf, dtype=torch.float32)
    cfg.tokenizer_name = None
    model = TransformerLensReplacementModel(cfg, move_to_device=False)
    model.load_and_process_state_dict(state, fold_ln=True, center_writing_weights=True,
                                      center_unembed=True, fold_value_biases=True)
    # the folder's tokenizer_config names transformers 5's TokenizersBackend, unknown to 4.57
    # (TransformerLens reloads the tokenizer by its name_or_path): saved again by 4.57
    resaved = tempfile.mkdtemp()
    PreTrainedTokenizerFast.from_pretrained(folder).save_pretrained(resaved)
    model.set_tokenizer(AutoTokenizer.from_pretrained(resaved))
    model._configure_replacement_model(transcoders)   # what from_config does after cls(cfg)
    return model.eval()


def _transcoders(folder: Path):
    """circuit-tracer's loaders on a local folder (its load_transcoders would go to the hub)."""
    import torch
    import yaml
    from circuit_tracer.transcoder.activation_functions import TopK
    from circuit_tracer.transcoder.cross_layer_transcoder import load_clt
    from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set

    conf = yaml.safe_load((folder / "config.yaml").read_text())
    common = dict(scan=conf.get("scan") or "jtlens", feature_input_hook=conf["feature_input_hook"],
                  feature_output_hook=conf["feature_output_hook"], device=torch.device("cpu"),
                  dtype=torch.float32, lazy_encoder=False, lazy_decoder=False)
    if conf["model_kind"] == "cross_layer_transcoder":
        tc = load_clt(str(folder), **common)
    else:
        paths = {i: str(folder / f"layer_{i}.safetensors")
                 for i in range(len(list(folder.glob("layer_*.safetensors"))))}
        tc = load_transcoder_set(paths, **common)
    if conf.get("activation") == "topk":  # 0.5.0's file loader knows relu and JumpReLU only
        if conf["model_kind"] == "cross_layer_transcoder":
            raise ValueError("circuit-tracer 0.5.0 has no TopK cross-layer transcoder")
        for layer in tc:
            layer.activation_function = TopK(int(conf["k"]))
    return tc


def main():
    args = json.loads(sys.argv[1])
    import torch

    sys.path.insert(0, str(ROOT))
    from benchmarks.rss import RSSPeak

    torch.set_num_threads(int(args.get("threads", 1)))
    from circuit_tracer import attribute

    model = _model(args["model"], _transcoders(Path(args["transcoders"])))
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20   # GiB, before attribute
    tokens = torch.tensor(args["tokens"])
    options = {k: args[k] for k in ("batch_size", "max_feature_nodes", "max_n_logits", "update_interval",
                                    "desired_logit_prob") if k in args}
    times = []
    for _ in range(int(args.get("repeat", 1))):
        t = time.perf_counter()
        with RSSPeak() as rss:
            graph = attribute(tokens, model, **options)
        times.append(time.perf_counter() - t)
    selected = graph.selected_features.numpy()
    A, n_feat, n_logit = graph.adjacency_matrix, len(selected), len(graph.logit_targets)
    rows = torch.cat([A[:n_feat], A[-n_logit:]])[:, :-n_logit]  # jtlens's `edges` layout
    dense = {"adjacency": A.numpy()} if args.get("dense", True) else {}
    np.savez(args["out"], edges=rows.numpy(), **dense,
             active_features=graph.active_features.numpy()[selected],
             activation_values=graph.activation_values.numpy()[selected],
             logit_tokens=np.array([t.vocab_idx for t in graph.logit_targets]),
             logit_probabilities=graph.logit_probabilities.numpy(),
             tokens=graph.input_tokens.numpy())
    print(json.dumps({"first_s": times[0], "second_s": times[-1],
                      "peak_GiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                      "loaded_GiB": loaded, "added_GiB": rss.added,
                      "torch_threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
