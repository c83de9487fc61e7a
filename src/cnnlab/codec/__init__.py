"""The ``.cnz`` byte codec: state dict <-> bytes, canonical Huffman coding (no model logic).

The file layout is documented in :mod:`cnnlab.codec.cnz` and docs/compression.md. Building
models from a file is :mod:`cnnlab.saved`'s job; deciding what to store is
:mod:`cnnlab.compress`'s.
"""

from cnnlab.codec.cnz import (
    MAGIC,
    MAX_ELEMENTS,
    CnzReport,
    TensorReport,
    decode_bytes,
    element_budget,
    encode_state_dict,
    is_cnz,
    join_sections,
    open_regular,
    read,
    read_file_bytes,
    relative_indices,
    split_sections,
)

__all__ = [
    "MAGIC",
    "MAX_ELEMENTS",
    "CnzReport",
    "TensorReport",
    "decode_bytes",
    "element_budget",
    "encode_state_dict",
    "is_cnz",
    "join_sections",
    "open_regular",
    "read",
    "read_file_bytes",
    "relative_indices",
    "split_sections",
]
