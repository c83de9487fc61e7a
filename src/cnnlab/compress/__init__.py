"""Deep Compression (Han, Mao, Dally, ICLR 2016): prune, share weights, entropy-code, store.

``save(model, path)`` writes a ``.cnz`` file (see :mod:`cnnlab.compress.format` and
docs/compression.md), ``load(path)`` rebuilds the model, ``compress(...)`` runs the pipeline.
"""

from cnnlab.compress.format import (
    CnzReport,
    TensorReport,
    decode_bytes,
    encode_state_dict,
    load,
    load_state_dict,
    read,
    read_header,
    rebuild_model,
    save,
)
from cnnlab.compress.pipeline import CompressionConfig, compress, finalize, layer_table, model_bytes
from cnnlab.compress.prune import gradual_sparsity, masks_for_sparsity, prune, sensitivity
from cnnlab.compress.quantize import kmeans_1d, share_weights

__all__ = [
    "CnzReport",
    "CompressionConfig",
    "TensorReport",
    "compress",
    "decode_bytes",
    "encode_state_dict",
    "finalize",
    "gradual_sparsity",
    "kmeans_1d",
    "layer_table",
    "load",
    "load_state_dict",
    "masks_for_sparsity",
    "model_bytes",
    "prune",
    "read",
    "read_header",
    "rebuild_model",
    "save",
    "sensitivity",
    "share_weights",
]
