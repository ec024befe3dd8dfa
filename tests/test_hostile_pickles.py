"""Hostile DragBench pickles: each is refused in one line, in a subprocess whose exit code is checked.

The pickles are built here, by hand: `Reduce(f, args, state)` pickles as "call f(*args),
then BUILD with state", which is how numpy writes arrays, dtypes and scalars, so any field
of them can be forged. numpy's own unpickling would segfault on the object-dtype ones (it
reads the forged bytes as object pointers); the subprocess turns that into a failed exit
code instead of a crashed test run.
"""
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from regiondrag.dragbench.reader import read_meta_data
from regiondrag.dragbench.unpickle import MAX_DEPTH, MAX_ELEMENTS, UnsafePickleError, restricted_load
from regiondrag.regions import RegionError

ROOT = Path(__file__).resolve().parents[1]
RECONSTRUCT = np._core.multiarray._reconstruct
SCALAR = np._core.multiarray.scalar
FROMBUFFER = np._core.numeric._frombuffer
PLAIN_STATE = (3, "<", None, None, None, -1, -1, 0)  # a plain dtype's state: (version, byteorder, ..., flags)


class Reduce:
    """Pickles as `f(*args)`, then BUILD with `state` (when given)."""

    def __init__(self, f, args, state=None):
        self.f, self.args, self.state = f, args, state

    def __reduce__(self):
        return (self.f, self.args) if self.state is None else (self.f, self.args, self.state)


def dtype(spec: str, state=PLAIN_STATE) -> Reduce:
    return Reduce(np.dtype, (spec, False, True), state)


def array(shape, dt: Reduce, data) -> Reduce:
    return Reduce(RECONSTRUCT, (np.ndarray, (0,), b"b"), (1, shape, dt, False, data))


def meta(points) -> bytes:
    return pickle.dumps({"prompt": "", "points": points, "mask": np.ones((4, 4), np.uint8)}, protocol=2)


def nested(depth: int) -> bytes:
    """A list inside a list ... `depth` deep, written opcode by opcode (pickle.dumps would recurse)."""
    return b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."


def shared_doubling(levels: int) -> bytes:
    """[x, x] with x = [y, y] ...: `levels` objects in the file, 2**levels leaves as a tree."""
    out = b"\x80\x02K\x01q\x00"  # 1, memo 0
    for i in range(levels):
        out += b"h" + bytes([i]) + b"h" + bytes([i]) + b"\x86q" + bytes([i + 1])  # (m[i], m[i]) -> memo i+1
    return out + b"."


OBJECT_STATE = (3, "|", None, None, None, -1, -1, 63)  # numpy's flags of an object dtype
# name -> (pickle bytes, a fragment of the refusal)
HOSTILE = {
    # numpy's own unpickler segfaults on these two (an object array of raw bytes; a void scalar)
    "object_dtype_raw_bytes": (meta(array((2,), dtype("O8", (3, "|") + PLAIN_STATE[2:]), b"\x41" * 16)),
                               "refusing numpy dtype 'O8'"),
    "void_scalar": (meta(Reduce(SCALAR, (dtype("V8", (3, "|") + PLAIN_STATE[2:]), b"\x41" * 8))),
                    "refusing numpy dtype 'V8'"),
    "flag_1_float_array": (meta(array((2,), dtype("f8", PLAIN_STATE[:7] + (1,)), b"\x41" * 16)), "only plain"),
    "object_dtype_array": (meta(array((2,), dtype("O8", OBJECT_STATE), b"\x41" * 16)), "refusing numpy dtype 'O8'"),
    "flagged_float_array": (meta(array((2,), dtype("f8", OBJECT_STATE), b"\x41" * 16)), "only plain dtypes"),
    "flagged_uint_array": (meta(array((2,), dtype("u8", PLAIN_STATE[:7] + (1,)), b"\x41" * 16)), "only plain"),
    "object_scalar": (meta(Reduce(SCALAR, (dtype("O8", OBJECT_STATE), b"\x41" * 8))), "refusing numpy dtype 'O8'"),
    "flagged_scalar": (meta(Reduce(SCALAR, (dtype("f8", OBJECT_STATE), b"\x41" * 8))), "only plain dtypes"),
    "object_frombuffer": (pickle.dumps(Reduce(FROMBUFFER, (b"\x41" * 16, dtype("O8", OBJECT_STATE), (2,), "C")),
                                       protocol=5), "refusing numpy dtype 'O8'"),
    "object_array_as_list": (meta(array((2,), dtype("O8", OBJECT_STATE), [1, 2])), "refusing numpy dtype 'O8'"),
    "structured_dtype": (meta(array((1,), dtype("V8", (3, "|", None, ("a",), {"a": (np.dtype("O"), 0)}, 8, 1, 63)),
                                    b"\x41" * 8)), "refusing numpy dtype 'V8'"),
    "datetime_dtype": (meta(array((1,), dtype("M8"), b"\0" * 8)), "refusing numpy dtype 'M8'"),
    "huge_shape": (meta(array((10**11,), dtype("f8"), b"\0" * 8)), f"at most {MAX_ELEMENTS} are read"),
    "negative_shape": (meta(array((-1,), dtype("f8"), b"")), "expected a tuple of sizes"),
    "short_data": (meta(array((4,), dtype("f8"), b"\0" * 8)), "its data must be 32 bytes, got 8"),
    "long_data": (meta(array((1,), dtype("f8"), b"\0" * 9)), "its data must be 8 bytes, got 9"),
    "scalar_wrong_length": (meta(Reduce(SCALAR, (dtype("f8"), b"\0" * 3))), "data is not 8 bytes"),
    "bad_array_state": (meta(Reduce(RECONSTRUCT, (np.ndarray, (0,), b"b"), (7, "x"))), "refusing a numpy array"),
    "reconstruct_wrong_arity": (meta(Reduce(RECONSTRUCT, (np.ndarray,))), "malformed pickle (TypeError"),
    "reconstruct_subclass": (meta(Reduce(RECONSTRUCT, (np.ma.MaskedArray, (0,), b"b"))), "refusing to load numpy.ma"),
    "deep_nesting": (nested(100_000), f"nested more than {MAX_DEPTH} deep"),
    "set_of_lists": (pickle.dumps(Reduce(set, ([[1], [2]],)), protocol=2), "malformed pickle (TypeError"),
    "odd_codec": (pickle.dumps(Reduce(__import__("_codecs").encode, ("abc", "rot13")), protocol=2), "codec 'rot13'"),
    "zlib_codec": (pickle.dumps(Reduce(__import__("_codecs").encode, (b"abc", "zlib_codec")), protocol=2), "refusing"),
    "os_system": (pickle.dumps(Reduce(__import__("os").system, ("echo pwned",))), "refusing to load"),
    "builtins_eval": (pickle.dumps(Reduce(eval, ("1",))), "refusing to load builtins.eval"),
    "billion_laughs": (shared_doubling(30), f"more than {MAX_ELEMENTS} items"),
    "self_reference": (b"\x80\x02]q\x00h\x00a.", "contains itself"),
    "truncated": (meta([(1, 2), (3, 4)])[:-7], "malformed pickle"),
    "garbage": (b"\xff\xd8\xff\xe0\0\x10JFIF", "malformed pickle"),
    "persistent_id": (b"\x80\x02X\x01\x00\x00\x00xQ.", "persistent reference"),
    "newobj_on_dtype": (b"\x80\x02cnumpy\ndtype\n)\x81.", "NEWOBJ"),
    "array_as_dict_key": (b"\x80\x02}" + pickle.dumps(array((1,), dtype("u1"), b"\0"), protocol=2)[2:-1] + b"K\x01s.",
                          "unhashable"),
}

LOADER = textwrap.dedent("""
    import sys
    from regiondrag.dragbench.reader import read_meta_data
    from regiondrag.regions import RegionError
    for path in sys.argv[1:]:
        try:
            read_meta_data(path)
            print("accepted")
        except RegionError as e:
            print(e)
""")


def test_hostile_pickles_are_refused_in_a_subprocess(tmp_path):
    """A segfault (exit -11) or any traceback fails this test; so does a case that is accepted."""
    paths = []
    for name, (data, _) in HOSTILE.items():
        paths.append(tmp_path / f"{name}.pkl")
        paths[-1].write_bytes(data)
    proc = subprocess.run([sys.executable, "-c", LOADER, *map(str, paths)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and proc.stderr == "", (proc.returncode, proc.stderr[-2000:])
    lines = proc.stdout.splitlines()
    assert len(lines) == len(HOSTILE), proc.stdout
    for (name, (_, fragment)), line, path in zip(HOSTILE.items(), lines, paths):
        assert line.startswith(f"cannot read DragBench metadata {path}: ") and fragment in line, (name, line)


def test_the_cli_refuses_an_object_dtype_pickle_in_one_line(tmp_path):
    pkl = tmp_path / "meta_data_region.pkl"
    pkl.write_bytes(HOSTILE["object_dtype_array"][0])
    out = tmp_path / "out.png"
    proc = subprocess.run([sys.executable, "-m", "regiondrag", "edit", "--image", str(ROOT / "examples" / "chelsea.png"),
                           "--regions", str(pkl), "--out", str(out), "--weights", str(tmp_path / "never_loaded")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert "refusing numpy dtype 'O8'" in proc.stderr and not out.exists()


PLAIN = {"prompt": "a cat", "points": [(1, 2), np.array([3.5, 4]), (np.float32(5), np.int64(6)), [7, 8]],
         "mask": np.eye(4, dtype=np.uint8), "big_endian": np.arange(6, dtype=">i4").reshape(2, 3),
         "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)), "empty": np.zeros((0, 2)),
         "bools": np.array([True, False]), "tags": {"a", "b"}, "half": np.float16(1.5)}


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_plain_values_and_arrays_load_at_every_protocol(protocol):
    loaded = restricted_load(pickle.dumps(PLAIN, protocol=protocol))
    assert loaded.keys() == PLAIN.keys()
    for key, value in PLAIN.items():
        if isinstance(value, np.ndarray):
            assert loaded[key].dtype == value.dtype and np.array_equal(loaded[key], value), key
            assert loaded[key].flags.writeable
        elif key != "points":
            assert loaded[key] == value and type(loaded[key]) is type(value), key
    assert np.array_equal(np.asarray(loaded["points"], np.float64), [[1, 2], [3.5, 4], [5, 6], [7, 8]])


def test_numpy_1_module_names_are_read():
    data = pickle.dumps(np.arange(3, dtype=np.uint8), protocol=2).replace(b"numpy._core.", b"numpy.core.")
    assert np.array_equal(restricted_load(data), [0, 1, 2])


def test_bool_bytes_other_than_0_and_1_are_true():
    loaded = restricted_load(pickle.dumps(array((3,), dtype("b1", (3, "|") + PLAIN_STATE[2:]), b"\0\x01\x07"),
                                          protocol=2))
    assert loaded.dtype == bool and loaded.tolist() == [False, True, True] and loaded.view(np.uint8).max() == 1


def test_nesting_up_to_the_cap_is_read():
    assert restricted_load(nested(MAX_DEPTH)) is not None
    with pytest.raises(UnsafePickleError, match="nested more than"):
        restricted_load(nested(MAX_DEPTH + 2))


@pytest.mark.parametrize("points, fragment", [
    ([(np.nan, 1), (2, 3)], "finite"), ([(1, 2)], "handle and target alternating"),
    ([(1, 2, 3), (4, 5, 6)], "(x, y) points"), ("12", "(x, y) points"), ([[[1]]], "(x, y) points"),
    ([(10**400, 1), (2, 3)], "(x, y) points"), ([(np.inf, 1), (2, 3)], "finite")])
def test_metadata_fields_are_checked(tmp_path, points, fragment):
    path = tmp_path / "meta_data.pkl"
    path.write_bytes(meta(points))
    with pytest.raises(RegionError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        read_meta_data(path)


@pytest.mark.parametrize("doc, fragment", [
    ({"prompt": 3, "points": [(1, 2), (3, 4)], "mask": np.ones((2, 2))}, "'prompt' must be a string"),
    ({"prompt": "", "points": [(1, 2), (3, 4)], "mask": "abc"}, "'mask' must be"),
    ({"prompt": "", "points": [(1, 2), (3, 4)], "mask": [[1, [2]]]}, "'mask' must be"),
    ({"prompt": "", "points": [(1, 2), (3, 4)], "mask": np.ones((0, 3))}, "'mask' must be"),
    ({"prompt": "", "points": [(1, 2), (3, 4)], "mask": np.zeros((2, 2))}, "'mask' is empty"),
    (["not", "a", "dict"], "expected a dict")])
def test_metadata_prompt_and_mask_are_checked(tmp_path, doc, fragment):
    path = tmp_path / "meta_data.pkl"
    path.write_bytes(pickle.dumps(doc))
    with pytest.raises(RegionError, match=fragment):
        read_meta_data(path)


VALID = pickle.dumps({"prompt": "p", "points": [np.array([1.0, 2.0]), (3, 4)], "mask": np.ones((3, 3), np.uint8)},
                     protocol=2)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_fuzz_mutated_pickles_load_or_are_refused(tmp_path, data):
    """Bytes flipped, inserted or cut out of a valid file: plain values, or one RegionError line."""
    blob = bytearray(VALID)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(blob)))
        op = data.draw(st.sampled_from(["flip", "insert", "cut"]))
        if op == "flip" and i < len(blob):
            blob[i] = data.draw(st.integers(0, 255))
        elif op == "insert":
            blob[i:i] = data.draw(st.binary(min_size=1, max_size=8))
        else:
            del blob[i:i + data.draw(st.integers(1, 16))]
    path = tmp_path / "m.pkl"
    path.write_bytes(bytes(blob))
    try:
        read_meta_data(path)
    except RegionError as e:
        assert "\n" not in str(e)


@pytest.mark.parametrize("x", [1e300, -1e300, 2.0**26 + 1])
def test_a_point_beyond_any_photo_is_refused(tmp_path, x):
    """A point at 1e300 was cast to int64 (a numpy warning, garbage) and dropped; one beyond 2^26 px (the
    longest side any photo read can have) is a broken file. Pairs merely off this photo's grid are dropped."""
    import warnings

    path = tmp_path / "meta_data_region.pkl"
    path.write_bytes(pickle.dumps({"prompt": "", "points": [(5, 5), (x, 5)], "mask": np.ones((8, 8), np.uint8)}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RegionError, match=r"point 1 \(.*, 5\) is not \(beyond 67108864 pixels"):
            read_meta_data(path)


def test_a_prompt_longer_than_the_cap_is_refused_before_it_is_tokenized(tmp_path):
    """An 8 MB prompt was read whole and tokenized (2.5 GB, 20 s)."""
    from regiondrag.config import MAX_PROMPT_CHARS

    path = tmp_path / "meta_data.pkl"
    doc = {"prompt": "x" * MAX_PROMPT_CHARS, "points": [(1, 2), (3, 4)], "mask": np.ones((8, 8), np.uint8)}
    path.write_bytes(pickle.dumps(doc))
    assert len(read_meta_data(path).prompt) == MAX_PROMPT_CHARS
    path.write_bytes(pickle.dumps({**doc, "prompt": "x" * 8 * 2**20}))
    with pytest.raises(RegionError, match=f"a prompt of {8 * 2**20} characters is longer than {MAX_PROMPT_CHARS}"):
        read_meta_data(path)
