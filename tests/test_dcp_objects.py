"""Non-tensor entries of torch.distributed.checkpoint directories (issue 14), as training
code saves them (torchtitan-style train states as ``io.BytesIO``, scheduler dicts,
objects of the training script's classes): a conversion to DCP copies them as stored and
never unpickles them; loading them (``--to torch``, ``compat.load_legacy``) accepts
bytes buffers and plain values, and refuses anything else unless trusted."""

from __future__ import annotations

import dataclasses
import importlib
import io
import json
import os
import pickle
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from test_dcp import _check_against_oracle, _legacy_layers, _save
from torch.distributed.checkpoint.filesystem import FileSystemReader
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, MetadataIndex
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load

import compat
from compat.cli import main as cli

CLASS_SOURCE = "class RunInfo:\n    def __init__(self, step):\n        self.step = step\n"


class _Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("touch pwned",))


def _saved_with_a_script_class(
    where: Path, module: str, state: dict[str, Any], *, evil: bool = False
) -> Path:
    """``where / "src"``: ``state`` plus ``run``, an object of a class of a module that
    exists only in ``where`` (as a training script's own), and with ``evil`` a payload
    that creates ``pwned``; the module is then forgotten, as in a later process."""
    (where / f"{module}.py").write_text(CLASS_SOURCE)
    sys.path.insert(0, str(where))
    try:
        importlib.invalidate_caches()
        run_info = importlib.import_module(module).RunInfo
    finally:
        sys.path.remove(str(where))
    extra = {"run": run_info(7), **({"evil": _Evil()} if evil else {})}
    _save({**state, **extra}, where / "src")
    _forget(module)
    return where / "src"


def _forget(module: str) -> None:
    sys.modules.pop(module, None)
    importlib.invalidate_caches()


def _train_state() -> dict[str, Any]:
    return {
        "train_state": io.BytesIO(b"step=3\x00\xff"),
        "lr_scheduler": {"last_epoch": 3, "_step_count": 4},
        "tokens_seen": 12345,
        "optimizer": {"exp_avg": torch.zeros(4), "lr": 1e-4},
    }


def _entry_bytes(path: Path) -> dict[str, bytes]:
    """Every non-tensor entry's stored bytes, read through DCP's own metadata."""
    metadata = FileSystemReader(str(path)).read_metadata()
    out = {}
    for key, entry in metadata.state_dict_metadata.items():
        if isinstance(entry, BytesStorageMetadata):
            info = metadata.storage_data[MetadataIndex(key)]
            with open(path / info.relative_path, "rb") as f:
                f.seek(info.offset)
                out[key] = f.read(info.length)
    return out


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a DCP directory, loaded by DCP itself (no object is unpickled)."""
    metadata = FileSystemReader(str(path)).read_metadata()
    state = {
        k: torch.empty(tuple(v.size), dtype=v.properties.dtype)
        for k, v in metadata.state_dict_metadata.items()
        if not isinstance(v, BytesStorageMetadata)
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp_load(state, checkpoint_id=str(path))
    return state


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_conversion_to_dcp_copies_every_entry_as_stored_and_unpickles_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, jobs: str
) -> None:
    legacy = _legacy_layers(11)
    state = {**legacy, **_train_state()}
    src = _saved_with_a_script_class(tmp_path, f"train_script_{jobs}", state, evil=True)
    monkeypatch.chdir(tmp_path)
    dst = tmp_path / "dst"
    assert cli(["upgrade", str(src), str(dst), "-q", "--jobs", jobs]) == 0
    assert not (tmp_path / "pwned").exists()
    stored = _entry_bytes(src)
    assert {"train_state", "run", "evil", "tokens_seen", "optimizer.lr"} <= set(stored)
    assert _entry_bytes(dst) == stored  # byte for byte, every entry
    state = _load_tensors(dst)
    assert state["b.weight"].dtype == torch.int8  # the legacy layers were upgraded
    assert torch.equal(state["optimizer.exp_avg"], torch.zeros(4))
    _check_against_oracle(state, legacy)


def test_loading_entries_that_need_classes_is_refused_listing_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    module = "train_script_refused"
    state = {**_legacy_layers(12), **_train_state()}
    src = _saved_with_a_script_class(tmp_path, module, state, evil=True)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out.pt"
    for extra in (["--dry-run"], []):
        assert cli(["upgrade", str(src), str(out), "--to", "torch", *extra]) == 1
        err = capsys.readouterr().err
        assert "2 problems" in err
        assert (
            f"its entry 'run' holds pickled Python objects, not only tensors (it needs {module}.RunInfo)"
            in err
        )
        assert "its entry 'evil'" in err and "posix.system is not a model class" in err
        assert "A conversion to DCP (the default --to) copies the entry byte for byte" in err
    with pytest.raises(compat.CheckpointError, match="its entry 'run'"):
        compat.load_legacy(src)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"{module}.py", "src"])
    assert not (tmp_path / "pwned").exists()


def test_bytes_buffers_and_plain_values_load_without_trust(tmp_path: Path) -> None:
    legacy = _legacy_layers(13)
    src = tmp_path / "src"
    _save({**legacy, **_train_state()}, src)
    state = compat.load_legacy(src)
    assert isinstance(state["train_state"], io.BytesIO)
    assert state["train_state"].getvalue() == b"step=3\x00\xff"
    assert state["lr_scheduler"] == {"last_epoch": 3, "_step_count": 4}  # as saved, nested
    assert state["tokens_seen"] == 12345
    _check_against_oracle(state, legacy)
    out = tmp_path / "out.pt"
    assert cli(["upgrade", str(src), str(out), "--to", "torch", "-q"]) == 0
    again = compat.load_legacy(out)  # a torch file holding a BytesIO loads without trust
    assert again["train_state"].getvalue() == b"step=3\x00\xff"
    assert again["optimizer"]["lr"] == 1e-4
    _check_against_oracle(again, legacy)


def test_trusted_entries_of_an_importable_class_are_unpickled(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    module = "train_script_trusted"
    src = _saved_with_a_script_class(tmp_path, module, _legacy_layers(14))
    out = tmp_path / "out.pt"
    args = ["upgrade", str(src), str(out), "--to", "torch", "--trust-pickle", "-q"]
    assert cli(args) == 1  # trusted, but the class is nowhere to import from
    err = capsys.readouterr().err
    assert "entry 'run': unpickling failed even with --trust-pickle" in err
    assert f"the pickle needs class {module}.RunInfo, which cannot be found" in err
    assert not out.exists()
    monkeypatch.syspath_prepend(str(tmp_path))
    assert cli(args) == 0
    assert compat.load_legacy(out, trust_pickle=True)["run"].step == 7
    assert compat.load_legacy(src, trust_pickle=True)["run"].step == 7
    _forget(module)


def test_an_entry_stored_transformed_keeps_its_descriptors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "src"
    _save({**_legacy_layers(15), "step": 5}, src)
    metadata = FileSystemReader(str(src)).read_metadata()
    index = MetadataIndex("step")
    info = metadata.storage_data[index]
    metadata.storage_data[index] = dataclasses.replace(
        info, transform_descriptors=["compat-test-codec"]
    )
    (src / ".metadata").write_bytes(pickle.dumps(metadata))
    dst = tmp_path / "dst"
    assert cli(["upgrade", str(src), str(dst), "-q"]) == 0
    written = FileSystemReader(str(dst)).read_metadata()
    assert written.storage_data[index].transform_descriptors == ["compat-test-codec"]
    assert _entry_bytes(dst) == _entry_bytes(src)
    capsys.readouterr()
    assert cli(["upgrade", str(src), str(tmp_path / "o.pt"), "--to", "torch", "--json"]) == 1
    err = json.loads(capsys.readouterr().out)["error"]
    assert "entry 'step' is stored transformed (compat-test-codec)" in err
    assert "a conversion to DCP (the default --to) copies it as stored" in err


def test_torch_output_and_load_legacy_keep_the_saved_nesting(tmp_path: Path) -> None:
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    legacy = _legacy_layers(16)
    optim = {"param_groups": [{"lr": 0.1, "params": ["b.weight"]}], "state": {}}
    src = tmp_path / "src"
    _save({"model": legacy, "optim": optim, "epoch": 3}, src)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp_to_torch_save(str(src), str(tmp_path / "torch_own.pt"))  # torch's own layout
    reference = torch.load(tmp_path / "torch_own.pt", weights_only=True)
    out = tmp_path / "out.pt"
    assert cli(["upgrade", str(src), str(out), "--to", "torch", "-q"]) == 0
    for got in (torch.load(out, weights_only=True), compat.load_legacy(src)):
        assert list(got) == list(reference) == ["model", "optim", "epoch"]
        assert got["optim"] == reference["optim"] and got["epoch"] == 3
        assert set(got["model"]) == set(reference["model"])
        assert got["model"]["b.weight"].dtype == torch.int8  # upgraded inside the nesting
        _check_against_oracle(got["model"], legacy)


def test_a_saved_structure_that_clashes_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "src"
    _save({**_legacy_layers(17), "run": 1, "run.step": 2}, src)
    metadata = FileSystemReader(str(src)).read_metadata()
    metadata.planner_data["run.step"] = ("run", "step")  # "run" is a value, not a dict
    (src / ".metadata").write_bytes(pickle.dumps(metadata))
    assert cli(["upgrade", str(src), str(tmp_path / "o.pt"), "--to", "torch"]) == 1
    err = capsys.readouterr().err
    assert "the saved structure of 'run.step' (('run', 'step')) clashes" in err
    assert not (tmp_path / "o.pt").exists()
    assert cli(["upgrade", str(src), str(tmp_path / "o"), "-q"]) == 0  # DCP keeps flat names
