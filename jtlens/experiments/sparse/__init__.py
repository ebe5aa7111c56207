"""Sparse dictionaries as data: the SAE pytree, SAELens / sparsify files, splicing SAEs into a
forward through the hooks pytree, their metrics, and feature dashboards' data; transcoders
(per-layer, skip, cross-layer; SAELens and circuit-tracer files), the replacement model, and
attribution graphs (VJPs, pruning, circuit-tracer's graph JSON).

Imports only the low-level modules (config, params, hooks, model, cache, checkpoint_io, ...);
never the TransformerLens facade (`jtlens.hooked_sae_transformer` sits on top of this).
"""

from jtlens.experiments.sparse.config import Metadata as Metadata
from jtlens.experiments.sparse.config import SAEConfig as SAEConfig
from jtlens.experiments.sparse.sae import SAE as SAE
from jtlens.experiments.sparse.sae import NormStats as NormStats
from jtlens.experiments.sparse.sae import batchtopk_to_jumprelu as batchtopk_to_jumprelu
from jtlens.experiments.sparse.sae import topk_relu as topk_relu
from jtlens.experiments.sparse.splice import Attached as Attached
from jtlens.experiments.sparse.splice import SAEActivationCache as SAEActivationCache
from jtlens.experiments.sparse.splice import run_with_cache_with_saes as run_with_cache_with_saes
from jtlens.experiments.sparse.splice import run_with_saes as run_with_saes
from jtlens.experiments.sparse.metrics import downstream_metrics as downstream_metrics
from jtlens.experiments.sparse.metrics import reconstruction_metrics as reconstruction_metrics
from jtlens.experiments.sparse.features import feature_ablation_sweep as feature_ablation_sweep
from jtlens.experiments.sparse.features import feature_dla as feature_dla
from jtlens.experiments.sparse.features import feature_gradients as feature_gradients
from jtlens.experiments.sparse.features import feature_patching_sweep as feature_patching_sweep
from jtlens.experiments.sparse.features import steering_hooks as steering_hooks
from jtlens.experiments.sparse.activations import ActivationStore as ActivationStore
from jtlens.experiments.sparse.corpus import corpus_tokens as corpus_tokens
from jtlens.experiments.sparse.activations import context_windows as context_windows
from jtlens.experiments.sparse.dashboards import dashboard_data as dashboard_data
from jtlens.experiments.sparse.transcoder import TranscoderConfig as TranscoderConfig
from jtlens.experiments.sparse.transcoder import Transcoders as Transcoders
from jtlens.experiments.sparse.transcoder import fold_input_norm as fold_input_norm
from jtlens.experiments.sparse.transcoder_formats import read_circuit_tracer as read_circuit_tracer
from jtlens.experiments.sparse.transcoder_formats import read_saelens as read_saelens
from jtlens.experiments.sparse.transcoder_formats import write_circuit_tracer as write_circuit_tracer
from jtlens.experiments.sparse.transcoder_formats import write_saelens as write_saelens
from jtlens.experiments.sparse.replacement import freeze as freeze
from jtlens.experiments.sparse.replacement import run_replacement as run_replacement
from jtlens.experiments.sparse.attribution import AttributionGraph as AttributionGraph
from jtlens.experiments.sparse.attention_scores import attention_attribution as attention_attribution
from jtlens.experiments.sparse.attribution import attribute as attribute
from jtlens.experiments.sparse.graph_prune import prune_graph as prune_graph
from jtlens.experiments.sparse.graph_prune import graph_scores as graph_scores
from jtlens.experiments.sparse.graph_files import graph_json as graph_json
from jtlens.experiments.sparse.graph_files import output_token_labels as output_token_labels
from jtlens.experiments.sparse.graph_files import top_activation_labels as top_activation_labels
from jtlens.experiments.sparse.graph_files import write_graph_json as write_graph_json
from jtlens.experiments.sparse.interventions import intervene as intervene
from jtlens.experiments.sparse.interventions import intervention_sweep as intervention_sweep
from jtlens.experiments.sparse.transcoder_train import mlp_activations as mlp_activations
from jtlens.experiments.sparse.transcoder_train import to_transcoders as to_transcoders
