"""lora.io.safetensors_io reads a hostile header without coercing anything or letting a parser error escape."""

import json
import struct

import pytest
import torch

from lora.io.safetensors_io import check_finite, header_shapes, load_file, save_file


def write_raw(path, header, data=b""):
    """A safetensors file with a hand-written header (a dict, or the raw JSON text)."""
    text = header if isinstance(header, str) else json.dumps(header)
    head = text.encode("utf-8")
    path.write_bytes(struct.pack("<Q", len(head)) + head + data)
    return path


def one_tensor(**changes):
    """The header of one F32 tensor of shape [2] (8 bytes), with some fields replaced."""
    return {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], **changes}}


def test_save_load_round_trip_keeps_every_bit(tmp_path):
    tensors = {"a": torch.randn(3, 4, dtype=torch.float64), "b": torch.arange(5, dtype=torch.int32),
               "c": torch.tensor([True, False]), "e": torch.empty(0, 2)}
    save_file(tensors, tmp_path / "x.safetensors", metadata={"format": "pt"})
    back, meta = load_file(tmp_path / "x.safetensors")
    assert meta == {"format": "pt"} and back.keys() == tensors.keys()
    assert all(torch.equal(back[k], tensors[k]) and back[k].dtype == tensors[k].dtype for k in tensors)


def test_well_formed_hand_written_header_loads(tmp_path):
    """The baseline for the refusals below: the same file with a correct header reads back."""
    path = write_raw(tmp_path / "ok.safetensors", one_tensor(), struct.pack("<2f", 1.5, -2.0))
    assert load_file(path)[0]["w"].tolist() == [1.5, -2.0]
    assert header_shapes(path) == {"w": (torch.float32, [2])}


@pytest.mark.parametrize("field, value, words", [
    ("shape", [2.9], "shape"), ("shape", [2.0], "shape"), ("shape", [True, 2], "shape"), ("shape", ["2"], "shape"),
    ("shape", [-2], "shape"), ("shape", 2, "shape"), ("data_offsets", [0.0, 8], "data_offsets"),
    ("data_offsets", [False, 8], "data_offsets"), ("data_offsets", [0, 8, 9], "data_offsets"),
    ("dtype", "F31", "dtype"), ("dtype", ["F32"], "dtype"), ("dtype", None, "dtype"),
])
def test_loose_types_in_an_entry_are_refused_not_coerced(tmp_path, field, value, words):
    path = write_raw(tmp_path / "bad.safetensors", one_tensor(**{field: value}), bytes(8))
    with pytest.raises(ValueError, match=words) as e:
        load_file(path)
    assert str(path) in str(e.value) and "'w'" in str(e.value)


@pytest.mark.parametrize("header", [
    {"w": "F32"}, {"w": {"dtype": "F32", "shape": [2]}}, {"w": None},
])
def test_malformed_entry_is_refused(tmp_path, header):
    with pytest.raises(ValueError, match="malformed"):
        load_file(write_raw(tmp_path / "bad.safetensors", header, bytes(8)))


@pytest.mark.parametrize("metadata", [["format", "pt"], "pt", {"format": 1}, {"format": None}])
def test_metadata_must_map_strings_to_strings(tmp_path, metadata):
    path = write_raw(tmp_path / "bad.safetensors", {"__metadata__": metadata, **one_tensor()}, bytes(8))
    with pytest.raises(ValueError, match="__metadata__"):
        load_file(path)


def test_deeply_nested_header_is_a_value_error(tmp_path):
    depth = 100_000
    path = write_raw(tmp_path / "deep.safetensors", "[" * depth + "]" * depth)
    with pytest.raises(ValueError, match="nested"):
        load_file(path)


def test_duplicate_key_in_header_is_refused(tmp_path):
    text = '{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, ' \
           '"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}'
    with pytest.raises(ValueError, match="duplicate key 'w'"):
        load_file(write_raw(tmp_path / "dup.safetensors", text, bytes(8)))


@pytest.mark.parametrize("offsets, data, words", [
    ([0, 8], bytes(4), "outside"),               # data shorter than the header says
    ([0, 4], bytes(4), "needs 8"),               # offsets disagree with the shape
    ([4, 12], bytes(12), "starts at byte 4"),    # a gap before the tensor
    ([0, 8], bytes(12), "after the last"),       # trailing bytes
])
def test_offsets_must_match_shapes_and_file_length(tmp_path, offsets, data, words):
    path = write_raw(tmp_path / "bad.safetensors", one_tensor(data_offsets=offsets), data)
    with pytest.raises(ValueError, match=words):
        load_file(path)


def test_header_larger_than_file_is_refused(tmp_path):
    path = tmp_path / "short.safetensors"
    path.write_bytes(struct.pack("<Q", 10**9) + b"{}")
    with pytest.raises(ValueError, match="does not fit"):
        load_file(path)


@pytest.mark.parametrize("metadata, tensors", [
    (["a"], {"w": torch.zeros(1)}), ({"a": 1}, {"w": torch.zeros(1)}),
    (None, {1: torch.zeros(1), "b": torch.zeros(1)}), (None, [torch.zeros(1)]), (None, {"w": [1.0]}),
])
def test_save_refuses_bad_names_values_and_metadata(tmp_path, metadata, tensors):
    with pytest.raises(ValueError):
        save_file(tensors, tmp_path / "x.safetensors", metadata=metadata)
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_check_finite_names_tensor_and_file(tmp_path, value):
    good = {"ids": torch.arange(3), "w": torch.ones(3)}
    assert check_finite(good, tmp_path / "f") is good
    bad = {**good, "v": torch.tensor([0.0, value])}
    with pytest.raises(ValueError, match=r"f: tensor 'v' has 1 non-finite"):
        check_finite(bad, tmp_path / "f")
