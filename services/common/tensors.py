"""Tensors on the wire: raw little-endian bytes + shape + dtype (never repeated floats)."""

from __future__ import annotations

import numpy as np
import torch

from nextgpt._proto import common_pb2
from nextgpt.errors import InvalidInput

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_NAMES = {v: k for k, v in _DTYPES.items()}


def to_proto(tensor: torch.Tensor) -> common_pb2.Tensor:
    tensor = tensor.detach().to("cpu").contiguous()
    if tensor.dtype not in _NAMES:
        tensor = tensor.float()
    # numpy has no bfloat16: ship the raw 16-bit words.
    raw = tensor.view(torch.int16) if tensor.dtype == torch.bfloat16 else tensor
    data = raw.numpy().astype(raw.numpy().dtype.newbyteorder("<"), copy=False).tobytes()
    return common_pb2.Tensor(data=data, shape=list(tensor.shape), dtype=_NAMES[tensor.dtype])


def from_proto(message: common_pb2.Tensor, what: str = "tensor") -> torch.Tensor:
    """Decode and validate; a malformed tensor is the caller's error (INVALID_ARGUMENT)."""
    dtype = _DTYPES.get(message.dtype)
    if dtype is None:
        raise InvalidInput(f"{what}: dtype {message.dtype!r} unsupported; use one of {sorted(_DTYPES)}")
    shape = tuple(int(d) for d in message.shape)
    if any(d < 0 for d in shape):
        raise InvalidInput(f"{what}: negative dimension in shape {list(shape)}")
    itemsize = torch.empty(0, dtype=dtype).element_size()
    expected = int(np.prod(shape, dtype=np.int64)) * itemsize
    if len(message.data) != expected:
        raise InvalidInput(
            f"{what}: {len(message.data)} bytes do not hold shape {list(shape)} of {message.dtype} "
            f"({expected} bytes)"
        )
    if dtype == torch.bfloat16:
        words = np.frombuffer(message.data, dtype="<i2").copy()
        return torch.from_numpy(words).view(torch.bfloat16).reshape(shape)
    # One copy: astype gives a writable array in native byte order (torch must own its memory).
    array = np.frombuffer(message.data, dtype=np.dtype(message.dtype).newbyteorder("<"))
    return torch.from_numpy(array.astype(np.dtype(message.dtype))).reshape(shape)
