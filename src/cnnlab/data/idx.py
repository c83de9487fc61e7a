"""The IDX file format of MNIST and Fashion-MNIST (LeCun et al., http://yann.lecun.com/exdb/mnist/).

An IDX file is a 4-byte magic number ``00 00 TT NN`` (``TT`` the element type, ``NN`` the
number of dimensions), ``NN`` big-endian 32-bit sizes, then the elements in row-major order.
Files may be gzip-compressed; we detect that from the gzip magic bytes, not the file name.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from cnnlab.codec import read_file_bytes
from cnnlab.errors import CnnlabError

__all__ = ["read_idx"]

# Element type code -> big-endian numpy dtype (the IDX specification's table).
IDX_TYPES: dict[int, str] = {
    0x08: ">u1",  # unsigned byte
    0x09: ">i1",  # signed byte
    0x0B: ">i2",  # short
    0x0C: ">i4",  # int
    0x0D: ">f4",  # float
    0x0E: ">f8",  # double
}
GZIP_MAGIC = b"\x1f\x8b"
MAX_IDX_BYTES = 1 << 30  # an IDX file, after gunzip (Fashion-MNIST's largest: 47 MB)


def _read_bytes(path: Path) -> bytes:
    """The file's bytes (gunzipped), a regular file of at most ``MAX_IDX_BYTES`` either way."""
    raw = read_file_bytes(path, MAX_IDX_BYTES, "IDX file")
    if raw[:2] != GZIP_MAGIC:
        return raw
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as f:
            data = f.read(MAX_IDX_BYTES + 1)  # a gzip bomb stops here
    except (OSError, EOFError, zlib.error) as exc:
        raise CnnlabError(f"{str(path)!r} is a corrupt gzip file ({exc})") from None
    if len(data) > MAX_IDX_BYTES:
        raise CnnlabError(f"{str(path)!r} unpacks to more than {MAX_IDX_BYTES:,} bytes")
    return data


def read_idx(path: str | os.PathLike[str]) -> torch.Tensor:
    """Read an IDX file (raw or gzip) into a tensor, checking the magic number and the size.

    A file whose header is not IDX, or whose length does not match the sizes in its header,
    raises :class:`CnnlabError` naming the file.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_TYPES:
        raise CnnlabError(f"{str(path)!r} is not an IDX file (bad magic number {data[:4].hex()})")
    dtype, ndim = np.dtype(IDX_TYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise CnnlabError(f"{str(path)!r}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise CnnlabError(
            f"{str(path)!r}: IDX header says {'x'.join(map(str, shape))} "
            f"({expected} bytes) but the file holds {len(data)} bytes (truncated or corrupt)"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return torch.from_numpy(array.astype(dtype.newbyteorder("="), copy=True))
