"""The IDX reader against files whose bytes the test writes by hand (not with write_idx)."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from pyro_vi.data.idx import read_idx, write_idx


def _hand_idx(code: int, shape: tuple[int, ...], payload: bytes) -> bytes:
    # magic: 0x00 0x00 <type code> <ndim>, then big-endian uint32 sizes (MNIST file format)
    return bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + payload


def test_reads_hand_written_ubyte_images(tmp_path):
    pixels = bytes(range(24))
    path = tmp_path / "imgs-idx3-ubyte"
    path.write_bytes(_hand_idx(0x08, (2, 3, 4), pixels))
    out = read_idx(path)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.arange(24, dtype=np.uint8).reshape(2, 3, 4))


def test_reads_big_endian_int32_and_float32_gzipped(tmp_path):
    ints = struct.pack(">3i", 1, -2, 70000)
    p1 = tmp_path / "ints.gz"
    p1.write_bytes(gzip.compress(_hand_idx(0x0C, (3,), ints)))
    np.testing.assert_array_equal(read_idx(p1), [1, -2, 70000])
    floats = struct.pack(">2f", 0.5, -3.25)
    p2 = tmp_path / "floats"
    p2.write_bytes(_hand_idx(0x0D, (1, 2), floats))
    np.testing.assert_array_equal(read_idx(p2), [[0.5, -3.25]])


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_write_read_round_trip(tmp_path, dtype):
    a = (np.arange(12) - 5).astype(dtype).reshape(3, 2, 2)
    if dtype == np.uint8:
        a = np.arange(12, dtype=np.uint8).reshape(3, 2, 2)
    for name in ("a.idx", "a.idx.gz"):
        back = read_idx(write_idx(tmp_path / name, a))
        assert back.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(back, a)


def test_bad_magic_names_the_file(tmp_path):
    path = tmp_path / "bad.idx"
    path.write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="bad.idx: bad magic number"):
        read_idx(path)


def test_unknown_type_code_names_the_file(tmp_path):
    path = tmp_path / "code.idx"
    path.write_bytes(_hand_idx(0x07, (1,), b"\x00"))
    with pytest.raises(ValueError, match="code.idx: unknown type code 0x07"):
        read_idx(path)


def test_truncated_body_names_the_file(tmp_path):
    path = tmp_path / "short.idx"
    path.write_bytes(_hand_idx(0x08, (2, 3), bytes(5)))  # 12-byte header + 5, the header promises 6
    with pytest.raises(ValueError, match="short.idx: 17 bytes.*uint8 needs 18"):
        read_idx(path)


def test_corrupt_gzip_and_missing_file_name_the_file(tmp_path):
    path = tmp_path / "broken.gz"
    path.write_bytes(gzip.compress(_hand_idx(0x08, (4,), bytes(4)))[:-6])
    with pytest.raises(ValueError, match="broken.gz"):
        read_idx(path)
    with pytest.raises(FileNotFoundError, match="nothing.idx"):
        read_idx(tmp_path / "nothing.idx")


def test_write_rejects_unsupported_dtype(tmp_path):
    with pytest.raises(TypeError, match="dtype"):
        write_idx(tmp_path / "x.idx", np.zeros(2, dtype=np.int64))
