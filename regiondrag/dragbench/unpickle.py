"""A pickle reader for DragBench's metadata files that builds every numpy object itself.

Threat model: a `.pkl` file is untrusted input (DragBench is fetched from file shares and
mirrors; a sample folder may come from anyone). Reading one must not run code, must not
corrupt memory, and must not take unbounded memory or time; whatever the file holds, the
outcome is either plain values or one `UnsafePickleError` saying what was refused.

- Code execution: `find_class` resolves only the few globals that a pickle of dicts, lists,
  numbers, strings and numpy arrays names, and each resolves to a function of ours, never
  to numpy's own callables or to a class (a class could be instantiated through NEWOBJ
  without our checks).
- Memory safety: numpy's own unpickling hands raw bytes to numpy with the dtype the file
  declares; a dtype of object kind, or a plain one whose pickled state sets the object
  flags, makes numpy read attacker-chosen bytes as object pointers (a segfault at best).
  So no numpy object is ever created while the pickle runs: the file's dtypes, arrays and
  scalars are recorded as inert placeholders, their fields checked as they arrive (a dtype
  must be a plain bool/int/uint/float of a standard size, native or explicit byte order,
  no fields, subarray, metadata or flags; an array's data a byte string of exactly
  shape x itemsize bytes). Only after the pickle has finished are the arrays built, by
  `np.frombuffer` from those bytes and that validated dtype.
- Bounded memory and time: the file's size, the total number of container items and
  array elements reachable from the result (counted as a tree, so references shared
  through the pickle memo cannot multiply a small file into a huge structure), and the
  nesting depth are capped by the constants below; self-referencing containers are refused.
"""
from __future__ import annotations

import io
import math
import pickle

import numpy as np

# DragBench's largest files are ~1 MB (a 1024 x 1024 mask and a few thousand points).
MAX_PICKLE_BYTES = 256 * 2**20
# Container items plus array elements in the whole result: a mask of an 8192 x 8192 photo.
MAX_ELEMENTS = 2**26
# Containers inside containers: DragBench's dicts nest three deep (dict -> list -> point).
MAX_DEPTH = 32

# numpy dtype strings as `np.dtype.__reduce__` writes them: the plain kinds, standard sizes.
PLAIN_DTYPES = frozenset({"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8"})
BYTE_ORDERS = frozenset({"<", ">", "|", "="})


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle that holds something other than plain values and plain numpy arrays, or too much."""


class _DType:
    """A pickled `numpy.dtype(spec)`: its spec string now, its state (byte order) from BUILD."""
    __slots__ = ("spec", "order", "frozen")

    def __init__(self, spec: str):
        self.spec, self.order, self.frozen = spec, "=", False

    def __setstate__(self, state) -> None:
        # a plain dtype's state is (3, byteorder, subarray, names, fields, elsize, alignment, flags)
        if self.frozen:
            raise UnsafePickleError(f"refusing a numpy dtype {self.spec!r} whose state is set twice")
        if not (isinstance(state, tuple) and len(state) == 8 and state[0] == 3 and state[1] in BYTE_ORDERS
                and state[2:] == (None, None, None, -1, -1, 0)):
            raise UnsafePickleError(f"refusing numpy dtype {self.spec!r} with state {state!r:.80}: only plain "
                                    f"dtypes are allowed (no fields, subarrays, metadata or flags)")
        self.order, self.frozen = state[1], True

    def resolve(self) -> np.dtype:
        """The validated dtype; using it fixes it (a later BUILD cannot change what was checked)."""
        self.frozen = True
        return np.dtype(self.spec if self.order == "|" else self.order + self.spec)


class _Array:
    """A pickled array: from `_reconstruct` (data arrives by BUILD) or `_frombuffer` (data given)."""
    __slots__ = ("dtype", "shape", "order", "data")

    def __init__(self):
        self.data = None

    def set(self, shape, dtype, fortran, data) -> None:
        if self.data is not None:
            raise UnsafePickleError("refusing a numpy array whose state is set twice")
        if not (isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape) and len(shape) <= MAX_DEPTH):
            raise UnsafePickleError(f"refusing a numpy array of shape {shape!r:.60}: expected a tuple of sizes")
        dtype = _dtype_of(dtype)
        count = math.prod(shape)
        if count > MAX_ELEMENTS:
            raise UnsafePickleError(f"refusing a numpy array of {count} elements (shape {shape}); at most "
                                    f"{MAX_ELEMENTS} are read")
        if not isinstance(data, (bytes, bytearray)) or len(data) != count * dtype.itemsize:
            size = len(data) if isinstance(data, (bytes, bytearray)) else type(data).__name__
            raise UnsafePickleError(f"refusing a numpy array of shape {shape} and dtype {dtype}: its data must be "
                                    f"{count * dtype.itemsize} bytes, got {size}")
        if type(fortran) is not bool:
            raise UnsafePickleError(f"refusing a numpy array with memory order {fortran!r:.20}")
        self.shape, self.dtype, self.order, self.data = shape, dtype, "F" if fortran else "C", bytes(data)

    def __setstate__(self, state) -> None:
        # numpy's ndarray state: (version 1, shape, dtype, is_fortran, raw bytes)
        if not (isinstance(state, tuple) and len(state) == 5 and state[0] == 1):
            raise UnsafePickleError(f"refusing a numpy array with state {state!r:.60}")
        self.set(*state[1:])

    def build(self) -> np.ndarray:
        if self.data is None:
            raise UnsafePickleError("refusing a numpy array that was never given its data")
        return _from_bytes(self.data, self.dtype).reshape(self.shape, order=self.order)


class _Scalar:
    __slots__ = ("dtype", "data")

    def __init__(self, dtype, data):
        self.dtype = _dtype_of(dtype)
        if not isinstance(data, bytes) or len(data) != self.dtype.itemsize:
            raise UnsafePickleError(f"refusing a numpy {self.dtype} scalar whose data is not "
                                    f"{self.dtype.itemsize} bytes")
        self.data = data

    def __setstate__(self, state) -> None:
        raise UnsafePickleError("refusing a numpy scalar with extra state")

    def build(self):
        return _from_bytes(self.data, self.dtype)[0]


def _from_bytes(data: bytes, dtype: np.dtype) -> np.ndarray:
    """A writable 1-D array; bools from their bytes' truth (a bool byte other than 0/1 is not a bool)."""
    if dtype.kind == "b":
        return np.frombuffer(data, np.uint8) != 0
    return np.frombuffer(data, dtype).copy()


def _dtype_of(value) -> np.dtype:
    if not isinstance(value, _DType):
        raise UnsafePickleError(f"refusing {type(value).__name__} where a numpy dtype is expected")
    return value.resolve()


# -- what the allowed globals resolve to: functions, so that NEWOBJ/INST cannot bypass them ----

_NDARRAY = object()  # stands for `numpy.ndarray`, which a pickle only passes to _reconstruct


def _ndarray_class():
    return _NDARRAY


def _dtype(spec, align=False, copy=True) -> _DType:
    if not (isinstance(spec, str) and spec in PLAIN_DTYPES and type(align) is bool and type(copy) is bool):
        raise UnsafePickleError(f"refusing numpy dtype {spec!r:.40}: only bool/int/uint/float dtypes "
                                f"({', '.join(sorted(PLAIN_DTYPES))}) are allowed")
    return _DType(spec)


def _reconstruct(cls, shape, typecode) -> _Array:
    if cls is not _NDARRAY:
        raise UnsafePickleError("refusing an array of another class than numpy.ndarray")
    return _Array()


def _frombuffer(buffer, dtype, shape, order) -> _Array:
    if order not in ("C", "F"):
        raise UnsafePickleError(f"refusing a numpy array with memory order {order!r:.20}")
    array = _Array()
    array.set(shape, dtype, order == "F", buffer)
    return array


def _scalar(dtype, data=b"") -> _Scalar:
    return _Scalar(dtype, data)


def _encode(text, encoding="utf-8") -> bytes:
    """`_codecs.encode`, by which protocol 2 spells bytes: latin-1 text only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"refusing _codecs.encode of {type(text).__name__} with codec {encoding!r:.20}")
    return text.encode("latin1")


def _empty_bytes() -> bytes:
    """`bytes()`, by which protocols 0 and 1 spell b'' (an empty array's data)."""
    return b""


def _set(items=()):
    return set(items)


def _frozenset(items=()):
    return frozenset(items)


# The globals a pickle of dicts, lists, strings, numbers and numpy arrays refers to, by the
# numpy >= 2 names (numpy 1 wrote `numpy.core`): arrays are rebuilt by `_reconstruct`
# (protocols <= 4) or `_frombuffer` (5); protocols <= 2 spell bytes as `_codecs.encode`.
ALLOWED_GLOBALS = {
    ("numpy", "ndarray"): _ndarray_class(),
    ("numpy", "dtype"): _dtype,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "scalar"): _scalar,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("_codecs", "encode"): _encode,
    ("builtins", "bytes"): _empty_bytes,
    ("builtins", "set"): _set,
    ("builtins", "frozenset"): _frozenset,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        canonical = module.replace("numpy.core", "numpy._core", 1) if module.startswith("numpy.core.") else module
        canonical = "builtins" if module == "__builtin__" else canonical  # protocols <= 2 write Python 2's name
        if (canonical, name) not in ALLOWED_GLOBALS:
            raise UnsafePickleError(f"refusing to load {module}.{name}: only plain values and numpy "
                                    f"arrays are allowed in DragBench metadata")
        return ALLOWED_GLOBALS[canonical, name]

    def persistent_load(self, pid):
        raise UnsafePickleError("refusing a persistent reference: only plain values are allowed")


_PLAIN = (type(None), bool, int, float, complex, str, bytes)


class _Builder:
    """The loaded structure with placeholders replaced by numpy objects, within the caps.

    Each object is converted once (shared references stay shared); its tree size and
    height are memoised, so a reference to it counts what it holds each time it is met.
    """

    def __init__(self):
        self.done: dict[int, tuple[object, int, int]] = {}  # id -> (converted, tree size, height)
        self.active: set[int] = set()
        self.total = 0

    def convert(self, obj, depth: int = 0):
        if isinstance(obj, _PLAIN):
            converted, size, height = obj, 1, 0
        elif id(obj) in self.done:
            converted, size, height = self.done[id(obj)]
        else:
            if id(obj) in self.active:
                raise UnsafePickleError("refusing a container that contains itself")
            self.active.add(id(obj))
            converted, size, height = self._convert(obj, depth)
            self.active.discard(id(obj))
            self.done[id(obj)] = (converted, size, height)
        if depth + height > MAX_DEPTH:
            raise UnsafePickleError(f"refusing containers nested more than {MAX_DEPTH} deep")
        self.total += size
        if self.total > MAX_ELEMENTS:
            raise UnsafePickleError(f"refusing a pickle of more than {MAX_ELEMENTS} items and array elements")
        return converted

    def _convert(self, obj, depth: int) -> tuple[object, int, int]:
        if isinstance(obj, (_Array, _Scalar)):
            value = obj.build()
            return value, max(1, getattr(value, "size", 1)), 0
        if isinstance(obj, _DType):
            return obj.resolve(), 1, 0
        if isinstance(obj, bytearray):
            return bytes(obj), 1, 0
        if depth >= MAX_DEPTH:
            raise UnsafePickleError(f"refusing containers nested more than {MAX_DEPTH} deep")
        start = self.total
        if type(obj) is dict:
            items = [(self.convert(k, depth + 1), self.convert(v, depth + 1)) for k, v in obj.items()]
            children = [c for kv in obj.items() for c in kv]
            value = _hashed(dict, items)
        elif type(obj) in (list, tuple, set, frozenset):
            children = list(obj)
            converted = [self.convert(c, depth + 1) for c in children]
            value = converted if type(obj) is list else _hashed(type(obj), converted)
        else:
            raise UnsafePickleError(f"refusing a {type(obj).__name__}: only plain values and numpy arrays")
        size = 1 + self.total - start
        self.total = start  # the caller adds the whole size once
        height = 1 + max((self.done.get(id(c), (None, 0, 0))[2] for c in children), default=0)
        return value, size, height


def _hashed(kind, items):
    try:
        return kind(items)
    except TypeError:  # e.g. an array as a dict key or in a set
        raise UnsafePickleError(f"refusing a {kind.__name__} keyed by an unhashable value") from None


# What a hostile pickle makes the C unpickler raise (malformed opcodes, unhashable keys,
# calls with wrong arguments, truncation); each becomes one refusal.
_MALFORMED = (pickle.UnpicklingError, EOFError, TypeError, ValueError, LookupError, AttributeError,
              OverflowError, RecursionError, MemoryError)


def restricted_load(data: bytes):
    """pickle.loads that builds only plain values and plain numpy arrays, or raises UnsafePickleError."""
    if len(data) > MAX_PICKLE_BYTES:
        raise UnsafePickleError(f"refusing a pickle of {len(data)} bytes; at most {MAX_PICKLE_BYTES} are read")
    try:
        loaded = _RestrictedUnpickler(io.BytesIO(data)).load()
        return _Builder().convert(loaded)
    except UnsafePickleError:
        raise
    except _MALFORMED as e:
        raise UnsafePickleError(f"malformed pickle ({type(e).__name__}: {str(e)[:100]})") from None
