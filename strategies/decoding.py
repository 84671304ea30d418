"""Decoding a Flower :class:`~flwr.app.Array` from an untrusted peer, bounded first.

``Array.numpy()`` hands the bytes to ``np.load``, which trusts the ``.npy`` header: a
header that declares ``2**62`` elements makes numpy allocate before it reads a byte,
another serialisation type raises ``TypeError``, garbage raises whatever the parser
meets first. A reply is the adversary's input (see ``docs/threat-model.md``), so this
module decodes one flat Array only after checking, with Python integers (no int64
overflow), everything that can be checked without numpy:

1. the fields are of the right types and ``stype`` is numpy's;
2. the declared dtype is the one expected and the declared shape is flat, with the
   expected element count and at most ``max_bytes`` of data;
3. ``len(data)`` is at most ``max_bytes`` plus a bounded header;
4. the ``.npy`` header (parsed by numpy's own header reader, bounded in size) agrees
   with the declared dtype and shape, and the bytes after it are exactly
   ``count * itemsize``;

and only then views the bytes with ``np.frombuffer``. Every failure is a
:class:`~securefed.exceptions.PayloadError` naming what is wrong and what was
expected. This module is numpy-only; it never imports torch.
"""

from __future__ import annotations

import io
import math

import numpy as np
from flwr.app import Array

from securefed.exceptions import PayloadError

__all__ = ["MAX_NPY_HEADER", "NUMPY_STYPE", "check_dtype_name", "decode_flat_array",
           "element_count", "is_dim_list"]

#: Flower's serialisation type of a numpy array (``flwr.common.constant.SType.NUMPY``).
NUMPY_STYPE = "numpy.ndarray"
#: Largest ``.npy`` header accepted (numpy writes 64-byte aligned headers of ~128 B).
MAX_NPY_HEADER = 4096
_NPY_MAGIC = b"\x93NUMPY"
#: dtype kinds a payload may use: bool, signed/unsigned int, float.
_KINDS = frozenset("biuf")


def is_dim_list(shape: object) -> bool:
    """Whether ``shape`` is a list or tuple of non-negative Python ints (no bools)."""
    return isinstance(shape, list | tuple) and all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)


def check_dtype_name(name: object) -> np.dtype:
    """The numpy dtype ``name`` names, if it is a plain numeric one.

    Raises
    ------
    PayloadError
        ``name`` is not a string, not a dtype numpy knows, or not bool/int/float
        (object, string, structured and void dtypes are refused).
    """
    if not isinstance(name, str) or len(name) > 32:
        raise PayloadError(f"dtype must be a short string, got {str(name)[:40]!r}")
    try:
        dtype = np.dtype(name)
    except (TypeError, ValueError, SyntaxError):
        raise PayloadError(f"unknown dtype {name!r}") from None
    if dtype.kind not in _KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise PayloadError(f"dtype {name!r} is not a numeric dtype (bool, int, float)")
    return dtype


def _npy_header(data: bytes) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, offset of the data) of an ``.npy`` blob, or PayloadError."""
    if data[:6] != _NPY_MAGIC or len(data) < 10:
        raise PayloadError("array data is not in .npy format (bad magic)")
    fp = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(
                fp, max_header_size=MAX_NPY_HEADER)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(
                fp, max_header_size=MAX_NPY_HEADER)
        else:
            raise PayloadError(f".npy format version {version} is not supported "
                               "(1.0 or 2.0)")
    except PayloadError:
        raise
    except Exception as exc:  # any failure of the header parser is a malformed reply
        raise PayloadError(f"malformed .npy header: {type(exc).__name__}: "
                           f"{str(exc)[:120]}") from None
    if not is_dim_list(shape):
        raise PayloadError(f"malformed .npy header shape {str(shape)[:80]}")
    del fortran  # a flat array is the same in either order
    return tuple(shape), dtype, fp.tell()


def decode_flat_array(array: object, *, dtype: str, max_bytes: int,
                      count: int | None = None) -> np.ndarray:
    """Decode one flat Array of ``dtype``, checking its size before any numpy call.

    Parameters
    ----------
    array : object
        What the reply holds under one dtype name (should be a :class:`flwr.app.Array`).
    dtype : str
        The dtype it must have (the record key of the packed payload).
    max_bytes : int
        Largest accepted size of the array's raw data.
    count : int, optional
        The exact element count expected (from the payload spec), if known.

    Returns
    -------
    numpy.ndarray
        A one-dimensional, writable copy.

    Raises
    ------
    PayloadError
        Anything about the Array that is not as described in the module docstring.
    """
    want = check_dtype_name(dtype)
    if not isinstance(array, Array):
        raise PayloadError(f"array {dtype!r} must be a flwr Array, got "
                           f"{type(array).__name__}")
    stype, declared, shape, data = array.stype, array.dtype, array.shape, array.data
    if stype != NUMPY_STYPE:
        raise PayloadError(f"array {dtype!r}: serialisation type {str(stype)[:40]!r} is not "
                           f"{NUMPY_STYPE!r}")
    if declared != dtype:
        raise PayloadError(f"array {dtype!r}: declared dtype {str(declared)[:40]!r} differs")
    if not is_dim_list(shape) or len(shape) != 1:
        raise PayloadError(f"array {dtype!r}: declared shape {str(shape)[:80]} is not flat")
    n = int(shape[0])
    if count is not None and n != count:
        raise PayloadError(f"array {dtype!r}: declares {n} elements, the layout describes "
                           f"{count}")
    if n * want.itemsize > max_bytes:
        raise PayloadError(f"array {dtype!r}: {n} elements of {want.itemsize} bytes exceed "
                           f"the size limit of {max_bytes} bytes")
    if not isinstance(data, bytes):
        raise PayloadError(f"array {dtype!r}: data must be bytes, got {type(data).__name__}")
    if len(data) > max_bytes + MAX_NPY_HEADER:
        raise PayloadError(f"array {dtype!r}: {len(data)} bytes exceed the size limit of "
                           f"{max_bytes} bytes")
    header_shape, header_dtype, offset = _npy_header(data)
    if header_dtype != want:
        raise PayloadError(f"array {dtype!r}: .npy header has dtype {header_dtype.str}, "
                           f"expected {want.str}")
    if header_shape != (n,):
        raise PayloadError(f"array {dtype!r}: .npy header shape {header_shape} differs from "
                           f"the declared ({n},)")
    if len(data) - offset != n * want.itemsize:
        raise PayloadError(f"array {dtype!r}: {len(data) - offset} data bytes, expected "
                           f"{n} x {want.itemsize} = {n * want.itemsize}")
    return np.frombuffer(data, dtype=want, count=n, offset=offset).copy()


def element_count(shape: tuple[int, ...]) -> int:
    """Elements of ``shape``, with Python integers (never overflows)."""
    return math.prod(shape)
