"""`make gpu-pack` carries what an offline GPU machine lacks, and nothing it has (the device's list, or ours)."""

from __future__ import annotations

from harness.gpu_pack import DEVICE_PACKAGES, carried, normalized


def test_the_pack_carries_fastai_and_what_only_it_needs_and_never_what_the_gpu_machine_has():
    imported = {"fastai": "2.8.12", "fastcore": "2.2.41", "torch": "2.14.1", "numpy": "2.3.0", "pandas": "3.0.0"}
    assert carried(imported) == {"fastai": "2.8.12", "fastcore": "2.2.41"}


def test_the_pack_never_carries_this_project_itself():
    assert carried({"fastai-serving": "0.1.0", "fastai-serving-client": "0.1.0"}) == {}


def test_distribution_names_compare_as_pip_normalizes_them():
    assert normalized("Plum_Dispatch") == "plum-dispatch" and normalized("PyYAML") in DEVICE_PACKAGES
