"""Deep Compression (Han, Mao, Dally, ICLR 2016): prune, share weights, entropy-code, store.

``compress(...)`` runs the pipeline with a :class:`CompressionConfig` (per-layer sparsity and
bits from a :mod:`recipe <cnnlab.compress.recipe>`), ``save(model, path)`` writes the ``.cnz``
file (bytes by :mod:`cnnlab.codec`), and :func:`cnnlab.load` reads it back like any saved model.
"""

from cnnlab.codec import CnzReport, TensorReport, decode_bytes, encode_state_dict, read
from cnnlab.compress.pipeline import CompressionConfig, compress, finalize, layer_table, model_bytes
from cnnlab.compress.prune import gradual_sparsity, masks_for_sparsity, prune, sensitivity
from cnnlab.compress.quantize import kmeans_1d, share_weights
from cnnlab.compress.store import (
    default_index_bits,
    load,
    load_state_dict,
    plain_state_dict,
    read_header,
    save,
)

__all__ = [
    "CnzReport",
    "CompressionConfig",
    "TensorReport",
    "compress",
    "decode_bytes",
    "default_index_bits",
    "encode_state_dict",
    "finalize",
    "gradual_sparsity",
    "kmeans_1d",
    "layer_table",
    "load",
    "load_state_dict",
    "masks_for_sparsity",
    "model_bytes",
    "plain_state_dict",
    "prune",
    "read",
    "read_header",
    "save",
    "sensitivity",
    "share_weights",
]
