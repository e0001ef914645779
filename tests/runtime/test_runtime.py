"""runtime/: atomic writes leave the old file or the new one, never a torn one; the hardware
table answers every consumer with one row per chip; provenance names the checkout."""

import json
import os
import types

import pytest

from runtime import files, hardware, provenance


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = str(tmp_path / "x.json")
    files.write_json(path, {"a": 1})
    with pytest.raises(RuntimeError), files.atomic_write(path) as f:
        f.write('{"a": 2, "b"')
        raise RuntimeError("crash mid-write")
    with open(path, encoding="utf-8") as f:
        assert json.load(f) == {"a": 1}
    assert os.listdir(tmp_path) == ["x.json"]  # no temporary left behind


def test_atomic_write_binary(tmp_path):
    path = str(tmp_path / "x.bin")
    with files.atomic_write(path, "wb") as f:
        f.write(b"\x00\x01")
    with open(path, "rb") as f:
        assert f.read() == b"\x00\x01"


@pytest.mark.parametrize("kind, chip, bf16", [
    ("NVIDIA H100 80GB HBM3", "h100", 989e12), ("NVIDIA H200", "h200", 989e12),
    ("TPU v5 lite", "v5e", 197e12), ("TPU v5p", "v5p", 459e12), ("NVIDIA A100-SXM4-80GB", "a100",
                                                                 312e12)])
def test_chips_match_device_kinds(kind, chip, bf16):
    device = types.SimpleNamespace(device_kind=kind, platform="gpu")
    row = hardware.chip_of(device)
    assert row.name == chip and row.peak_flops() == bf16
    assert hardware.peak_flops([device, device]) == 2 * bf16
    assert row.peak_flops("float32") <= bf16  # an unknown dtype falls back to bf16, fp32 is lower


def test_unknown_chip_has_no_peak():
    device = types.SimpleNamespace(device_kind="Mystery 9000", platform="gpu")
    assert hardware.chip_of(device) is None
    assert hardware.peak_flops([device]) != hardware.peak_flops([device])  # NaN


def test_cpu_peak_is_nominal_per_core():
    assert hardware.peak_flops() == hardware.CPU_PEAK_FLOPS_PER_CORE * os.cpu_count()


def test_provenance_names_the_checkout():
    revision = provenance.git_revision()
    assert revision is None or len(revision.removesuffix("-dirty")) == 40
    assert provenance.versions()["jax"]
    assert provenance.device_slug(provenance.device_info()) == f"cpu-{os.cpu_count()}core"
