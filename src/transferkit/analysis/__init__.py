"""Analyses of a trained classification run (``transferkit analyze <what> --run runs/<name>``).

Each writes ``runs/<name>/analysis/<what>/`` (PNGs + ``<what>.json``) and a section of the run's report:

- ``features``: PCA / t-SNE scatter by class, linear separability, kNN accuracy, silhouette;
- ``weights``: norms, change from the starting checkpoint, singular-value spectra per layer;
- ``activations``: activation and gradient statistics per block, class x neuron heatmaps;
- ``attention``: attention maps (last block, rollout, heads) overlaid on images, attention distance;
- ``landscape``: 1-D / 2-D loss landscape along filter-normalised random directions.
"""

from transferkit.analysis.activations import analyze_activations
from transferkit.analysis.attention import analyze_attention, attention_maps
from transferkit.analysis.common import summary
from transferkit.analysis.features import analyze_features
from transferkit.analysis.landscape import analyze_landscape, filter_normalized_direction
from transferkit.analysis.weights import analyze_weights

ANALYSES = ("features", "weights", "activations", "attention", "landscape")

__all__ = [
    "ANALYSES",
    "analyze_activations",
    "analyze_attention",
    "analyze_features",
    "analyze_landscape",
    "analyze_weights",
    "attention_maps",
    "filter_normalized_direction",
    "summary",
]
