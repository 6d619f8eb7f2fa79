"""open_gguf reads a GGUF file as the gguf package's GGUFReader reads it (every metadata
field and tensor, their bytes and dtypes), with plain read-only ndarrays where GGUFReader
slices an np.memmap (what made its parse three times as long): either byte order, a file
cut short refused with GGUFReader's error, the memory map kept exactly as long as a tensor
uses it."""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest
from gguf import GGUFEndian, GGUFReader, GGUFWriter

from aiollm.model import default_model_path
from aiollm.model.gguf_reader import open_gguf


def test_open_gguf_reads_every_field_and_tensor_as_gguf_reader_does():
    path = default_model_path()
    ours, theirs = open_gguf(path), GGUFReader(path)
    assert list(ours.fields) == list(theirs.fields)
    assert "tokenizer.ggml.merges" in ours.fields  # string arrays: what the parse is slow at
    for key, field in theirs.fields.items():
        mine = ours.fields[key]
        assert (mine.offset, mine.data, mine.types) == (field.offset, field.data, field.types)
        assert len(mine.parts) == len(field.parts), key
        for a, b in zip(mine.parts, field.parts):
            assert a.dtype == b.dtype and np.array_equal(a, b), key
        assert mine.contents() == field.contents(), key
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    for mine, tensor in zip(ours.tensors, theirs.tensors):
        assert (mine.tensor_type, mine.shape.tolist(), mine.n_bytes, mine.data_offset) == (
            tensor.tensor_type, tensor.shape.tolist(), tensor.n_bytes, tensor.data_offset)
        assert mine.data.dtype == tensor.data.dtype and np.array_equal(mine.data, tensor.data)
        # a plain view of the file's map: no copy, and as read-only as GGUFReader's
        assert type(mine.data) is np.ndarray and not mine.data.flags.writeable
        assert np.shares_memory(mine.data, ours.data)
    assert ours.data_offset == theirs.data_offset and ours.alignment == theirs.alignment


def _error(read, path) -> tuple[str, str] | None:
    try:
        read(path)
    except Exception as e:  # noqa: BLE001 (whatever GGUFReader raises is compared)
        return type(e).__name__, str(e)
    return None


def test_open_gguf_refuses_what_gguf_reader_refuses(tmp_path):
    path = tmp_path / "not.gguf"
    path.write_bytes(b"NOTGGUF" + bytes(64))
    with pytest.raises(ValueError, match="GGUF magic invalid"):
        open_gguf(path)
    # a file cut short in its header, its metadata or its tensors: the same error as
    # GGUFReader's (type and message), whatever it is. len(head) cuts the first tensor
    # (token_embd: 1.79 MB to past 8 MB); each cut past 1 MB parses the 49,152 tokens and
    # merges again (~3 s), so one cut there is enough
    with open(default_model_path(), "rb") as f:
        head = f.read(8 << 20)
    cut = tmp_path / "cut.gguf"
    for size in (0, 3, 8, 23, 4096, 100_000, 1_500_000, len(head)):
        cut.write_bytes(head[:size])
        theirs = _error(GGUFReader, cut)
        assert theirs is not None and _error(open_gguf, cut) == theirs, size


def _small_gguf(folder, endian: GGUFEndian = GGUFEndian.LITTLE) -> str:
    """The path of a GGUF file written into `folder` in `endian` byte order: five metadata
    fields (numbers, strings, arrays of each) and two small tensors, f32 (3, 4) and f16
    (2, 4), each arange."""
    path = str(folder / f"{endian.name}.gguf")
    w = GGUFWriter(path, "llama", endianess=endian)
    w.add_uint32("test.u32", 7)
    w.add_float32("test.f32", 1.5)
    w.add_string("test.str", "h\u00e9")
    w.add_array("test.strs", ["a", "bc"])
    w.add_array("test.ints", [1, -2, 3])
    w.add_tensor("w.f32", np.arange(12, dtype=np.float32).reshape(3, 4))
    w.add_tensor("w.f16", np.arange(8, dtype=np.float16).reshape(2, 4))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("endian", [GGUFEndian.LITTLE, GGUFEndian.BIG])
def test_open_gguf_reads_either_byte_order_as_gguf_reader_does(tmp_path, endian):
    # a file written for the other byte order (GGUFReader's byte_order "S"): its values and
    # tensors come back byte-swapped views, as GGUFReader's do
    path = _small_gguf(tmp_path, endian)
    ours, theirs = open_gguf(path), GGUFReader(path)
    assert ours.byte_order == theirs.byte_order == ("S" if endian == GGUFEndian.BIG else "I")
    assert {k: f.contents() for k, f in ours.fields.items()} == {
        k: f.contents() for k, f in theirs.fields.items()}
    assert ours.fields["test.strs"].contents() == ["a", "bc"]
    for mine, tensor in zip(ours.tensors, theirs.tensors, strict=True):
        assert mine.data.dtype == tensor.data.dtype and np.array_equal(mine.data, tensor.data)
    assert ours.tensors[0].data.tolist() == np.arange(12).reshape(3, 4).tolist()


def _maps_of(path: str) -> int:
    with open("/proc/self/maps") as f:
        return sum(line.rstrip().endswith(path) for line in f)


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="Linux /proc only")
def test_open_gguf_map_lives_with_its_tensors_and_goes_with_them(tmp_path):
    # (a small file: how long the map lives does not depend on the file's size, and the
    # default model's metadata took 0.7 s a parse, six parses here)
    path = os.path.realpath(_small_gguf(tmp_path))
    before = _maps_of(path)
    for _ in range(5):  # readers dropped whole: nothing left mapped
        open_gguf(path)
    gc.collect()
    assert _maps_of(path) == before
    reader = open_gguf(path)
    tensor = reader.tensors[-1]
    expected = np.array(tensor.data)
    del reader
    gc.collect()
    # the reader gone, its tensor's view keeps the map (no use of an unmapped buffer) ...
    assert _maps_of(path) == before + 1 and np.array_equal(tensor.data, expected)
    with pytest.raises(ValueError, match="read-only"):
        tensor.data[...] = 0
    del tensor
    gc.collect()
    assert _maps_of(path) == before  # ... and only as long as it is used
