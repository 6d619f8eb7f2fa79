"""open_gguf reads a GGUF file as the gguf package's GGUFReader reads it (every metadata
field and tensor, their bytes and dtypes), with plain read-only ndarrays where GGUFReader
slices an np.memmap (what made its parse three times as long)."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGUFReader

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


def test_open_gguf_refuses_what_gguf_reader_refuses(tmp_path):
    path = tmp_path / "not.gguf"
    path.write_bytes(b"NOTGGUF" + bytes(64))
    with pytest.raises(ValueError, match="GGUF magic invalid"):
        open_gguf(path)
    # a file cut short inside its metadata: the same error as GGUFReader's, whatever it is
    cut = tmp_path / "cut.gguf"
    with open(default_model_path(), "rb") as f:
        cut.write_bytes(f.read(4096))
    with pytest.raises(Exception) as theirs:
        GGUFReader(cut)
    with pytest.raises(type(theirs.value)):
        open_gguf(cut)
