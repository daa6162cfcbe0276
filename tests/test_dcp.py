"""torch.distributed.checkpoint directories (issue 14): detection, every output format,
values equal to the oracle after loading into compat's modules, 2-rank checkpoints,
clear errors for broken directories, atomicity, nothing unpickled that could run code."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import oracle
import pytest
import torch
from conftest import ROOT
from torch.distributed.checkpoint.filesystem import FileSystemReader
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

import compat
from compat.checkpoint.files import dcp as dcp_format
from compat.checkpoint.files import torchfile
from compat.cli import main as cli

K, N = 32, 8
TARGETS = ["dcp", "torch", "safetensors", "sharded"]


def _save(state: dict[str, Any], path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process"
        dcp_save(state, checkpoint_id=str(path))


def _legacy_layers(seed: int = 0) -> dict[str, torch.Tensor]:
    """Three legacy layers: torchair int64 scale with folded offset (F2, int8 output), a
    float32 re-save of the int8 weight (F4, float16 output), per-tensor (1,) scale and
    offset (F3, int8 output)."""
    g = torch.Generator().manual_seed(seed)
    w = lambda: torch.randint(-128, 128, (N, K), dtype=torch.int8, generator=g)  # noqa: E731
    s = lambda n=N: (torch.rand(n, generator=g) + 0.5) * 2e-3  # noqa: E731
    bias = lambda: torch.randint(-500, 500, (N,), dtype=torch.int32, generator=g)  # noqa: E731
    offset = torch.round(torch.randn(N, generator=g) * 5)
    q = oracle.encode(s().numpy(), offset.numpy())
    return {
        "a.weight": w(),
        "a.scale": torch.from_numpy(q.astype(np.int64)),
        "a.offset": offset,
        "a.bias": bias(),
        "b.weight": w().float(),
        "b.scale": s(),
        "b.bias": bias(),
        "c.weight": w(),
        "c.scale": s(1),
        "c.offset": torch.tensor([3.0]),
        "c.bias": bias(),
    }


CONFIG = {"a": (torch.int8, True), "b": (torch.float16, False), "c": (torch.int8, True)}


def _model() -> torch.nn.Module:
    model = torch.nn.Module()
    for name, (out, offset) in CONFIG.items():
        model.add_module(name, compat.LinearQuant(K, N, offset=offset, output_dtype=out))
    return model


def _oracle(legacy: dict[str, torch.Tensor], name: str, x: torch.Tensor) -> torch.Tensor:
    """The layer's output from the *legacy* tensors, by tests/oracle.py."""
    out, _ = CONFIG[name]
    scale = legacy[f"{name}.scale"]
    got = oracle.quant_matmul(
        x.numpy(),
        legacy[f"{name}.weight"].to(torch.int64).numpy().T,
        scale.numpy(),
        offset=legacy[f"{name}.offset"].numpy() if f"{name}.offset" in legacy else None,
        bias=legacy[f"{name}.bias"].numpy(),
        bias_kind="int32",
        out=str(out).removeprefix("torch."),
        scale_kind="int64" if scale.dtype == torch.int64 else "float32",
    )
    return torch.from_numpy(np.ascontiguousarray(got))


def _check_against_oracle(state: dict[str, Any], legacy: dict[str, torch.Tensor]) -> None:
    model = _model()
    model.load_state_dict({k: v for k, v in state.items() if k.split(".")[0] in CONFIG})
    x = torch.randint(
        -128, 128, (5, K), dtype=torch.int8, generator=torch.Generator().manual_seed(1)
    )
    for name in CONFIG:
        layer = getattr(model, name)
        assert layer.weight.dtype == torch.int8
        y = layer(x)
        want = _oracle(legacy, name, x)
        assert y.dtype == want.dtype and torch.equal(y, want), name


def _read_output(path: Path, target: str) -> dict[str, Any]:
    if target == "dcp":
        return compat.load_legacy(path)
    if target == "torch":
        return torch.load(path, weights_only=True)
    return compat.load_legacy(path)


def _digests(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


@pytest.mark.parametrize("target", TARGETS)
def test_converted_dcp_loads_into_compat_modules_equal_to_the_oracle(
    tmp_path: Path, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    legacy = _legacy_layers()
    src = tmp_path / "ckpt"
    extra: dict[str, Any] = {"norm.weight": torch.ones(K)}
    if target in ("dcp", "torch"):
        extra["step"] = 7  # non-tensor entries survive where the format can hold them
    _save({**legacy, **extra}, src)
    before = _digests(src)
    dst = tmp_path / (
        "out.pt" if target == "torch" else "out.safetensors" if target == "safetensors" else "out"
    )
    assert cli(["upgrade", str(src), str(dst), "--to", target, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "converted" and report["verified"] and report["kind"] == "dcp"
    assert report["quant_layers"] == 3
    assert _digests(src) == before  # the source is never touched
    out = _read_output(dst, target)
    assert out["norm.weight"].dtype == torch.float32
    if "step" in extra:
        assert out["step"] == 7
    assert out["b.weight"].dtype == torch.int8  # F4 restored
    _check_against_oracle(out, legacy)
    assert not [p for p in tmp_path.iterdir() if "compat-tmp" in p.name]


def test_dcp_output_is_readable_by_torch_distributed_checkpoint(tmp_path: Path) -> None:
    legacy = _legacy_layers(2)
    _save({**legacy, "step": 3}, tmp_path / "src")
    assert cli(["upgrade", str(tmp_path / "src"), str(tmp_path / "dst"), "-q"]) == 0
    metadata = FileSystemReader(str(tmp_path / "dst")).read_metadata()
    state: dict[str, Any] = {
        k: torch.empty(tuple(v.size), dtype=v.properties.dtype)
        for k, v in metadata.state_dict_metadata.items()
        if hasattr(v, "size")
    }
    state["step"] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp_load(state, checkpoint_id=str(tmp_path / "dst"))
    assert state["step"] == 3
    _check_against_oracle(state, legacy)


def test_report_and_load_legacy_read_dcp_and_dry_run_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    legacy = _legacy_layers(3)
    _save(legacy, tmp_path / "src")
    assert cli(["upgrade", str(tmp_path / "src"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "3 quantized linear layers" in out and "dry run: would convert" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    state = compat.load_legacy(tmp_path / "src")
    assert state["b.weight"].dtype == torch.int8
    assert compat.upgrade_report(state).changed is False
    _check_against_oracle(state, legacy)


def test_in_place_keeps_a_backup(tmp_path: Path) -> None:
    legacy = _legacy_layers(4)
    src = tmp_path / "src"
    _save(legacy, src)
    before = _digests(src)
    assert cli(["upgrade", str(src), "--in-place", "-q"]) == 0
    assert _digests(tmp_path / "src.bak") == before
    _check_against_oracle(compat.load_legacy(src), legacy)
    after = _digests(src)
    assert cli(["upgrade", str(src), "--in-place", "-q"]) == 0  # current now: nothing written
    assert _digests(src) == after and _digests(tmp_path / "src.bak") == before
    _save(_legacy_layers(5), tmp_path / "other")
    (tmp_path / "other.bak").mkdir()  # an existing backup is never overwritten
    assert cli(["upgrade", str(tmp_path / "other"), "--in-place", "-q"]) == 1
    assert compat.upgrade_report(compat.load_legacy(tmp_path / "other")).changed is False


SPAWN = r"""
import os, sys, warnings
import torch, torch.distributed as dist, torch.multiprocessing as mp
from torch.distributed.checkpoint.state_dict_saver import save
sys.path.insert(0, {tests!r})
import test_dcp

def run(rank, path, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    legacy = test_dcp._legacy_layers(rank)
    state = {{f"rank{{rank}}.{{k}}": v for k, v in legacy.items()}}
    save(state, checkpoint_id=path)
    dist.destroy_process_group()

if __name__ == "__main__":
    mp.spawn(run, args=(sys.argv[1], int(sys.argv[2])), nprocs=2)
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _saved_by_two_ranks(template: str, src: Path) -> Path:
    """Run ``template`` (a script saving to argv[1] from two gloo ranks); the directory."""
    script = src.with_suffix(".py")
    script.write_text(template.format(tests=str(ROOT / "tests")))
    env = {**os.environ, "TORCH_DEVICE_BACKEND_AUTOLOAD": "0", "PYTHONWARNINGS": "ignore"}
    subprocess.run(
        [sys.executable, str(script), str(src), str(_free_port())], check=True, env=env, timeout=240
    )
    return src


def test_a_checkpoint_written_by_two_ranks(tmp_path: Path) -> None:
    src = _saved_by_two_ranks(SPAWN, tmp_path / "two")
    assert {"__0_0.distcp", "__1_0.distcp", ".metadata"} <= {p.name for p in src.iterdir()}
    assert cli(["upgrade", str(src), str(tmp_path / "out"), "-q"]) == 0
    state = compat.load_legacy(tmp_path / "out")
    for rank in (0, 1):
        mine = {
            k.removeprefix(f"rank{rank}."): v
            for k, v in state.items()
            if k.startswith(f"rank{rank}.")
        }
        _check_against_oracle(mine, _legacy_layers(rank))


SHARDED = r"""
import os, sys, warnings
import torch, torch.distributed as dist, torch.multiprocessing as mp
from torch.distributed.checkpoint.state_dict_saver import save
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Replicate, Shard, distribute_tensor
sys.path.insert(0, {tests!r})
import test_dcp

def run(rank, path, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    mesh = init_device_mesh("cpu", (2,))
    legacy = test_dcp._legacy_layers(9)  # the same full tensors on both ranks
    place = {{"b.weight": Shard(0), "c.weight": Shard(1), "a.weight": Shard(1)}}
    state = {{
        k: distribute_tensor(v, mesh, [place.get(k, Replicate())]) for k, v in legacy.items()
    }}
    save(state, checkpoint_id=path)
    dist.destroy_process_group()

if __name__ == "__main__":
    mp.spawn(run, args=(sys.argv[1], int(sys.argv[2])), nprocs=2)
"""


def test_tensors_sharded_across_two_ranks_are_reassembled(tmp_path: Path) -> None:
    """FSDP2-style DTensors: a float32 weight split by rows (each piece read straight into
    its rows), int8 weights split by columns (pieces that are not contiguous in the whole
    tensor, read with torch.load), replicated scales and biases; converted to every
    target, the full tensors come back equal to the oracle's."""
    src = _saved_by_two_ranks(SHARDED, tmp_path / "sharded")
    meta = FileSystemReader(str(src)).read_metadata()
    assert len(meta.state_dict_metadata["b.weight"].chunks) == 2
    assert len(meta.state_dict_metadata["c.weight"].chunks) == 2
    legacy = _legacy_layers(9)
    reader = dcp_format._Reader(src)
    loaded: list[str] = []
    load_item = reader._load_item
    reader._load_item = lambda key, info, **kw: loaded.append(key) or load_item(key, info, **kw)  # type: ignore[method-assign]
    for key, value in legacy.items():
        assert torch.equal(reader.tensor(key), value), key
        streamed = torch.cat([c.clone() for c in dcp_format._Reader(src).chunks(key)])
        assert torch.equal(streamed, value.reshape(-1)), key
    # row pieces are read straight into the result; column pieces go through torch.load
    assert "b.weight" not in loaded and loaded.count("c.weight") == 2
    for target in TARGETS:
        dst = tmp_path / f"out-{target}"
        if target in ("torch", "safetensors"):
            dst = dst.with_suffix(".pt" if target == "torch" else ".safetensors")
        assert cli(["upgrade", str(src), str(dst), "-q", "--to", target]) == 0
        _check_against_oracle(_read_output(dst, target), legacy)


def _broken(tmp_path: Path, how: str) -> Path:
    src = tmp_path / "src"
    _save(_legacy_layers(5), src)
    data = sorted(src.glob("*.distcp"))[0]
    if how == "truncated":
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    elif how == "no-metadata":
        (src / ".metadata").unlink()
    elif how == "missing-file":
        data.unlink()
    return src


@pytest.mark.parametrize(
    ("how", "names"),
    [("truncated", ".distcp"), ("no-metadata", ".metadata"), ("missing-file", ".distcp")],
)
def test_broken_directories_are_clear_errors_and_dst_untouched(
    tmp_path: Path, how: str, names: str, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _broken(tmp_path, how)
    dst = tmp_path / "dst"
    assert cli(["upgrade", str(src), str(dst)]) == 1
    err = capsys.readouterr().err
    assert names in err and str(src) in err
    assert {"truncated": "truncated", "no-metadata": "missing", "missing-file": "missing"}[
        how
    ] in err
    assert not dst.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    with pytest.raises(compat.CheckpointError, match=names.replace(".", r"\.")):
        compat.load_legacy(src)


class _Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("touch pwned",))


def test_a_crafted_metadata_pickle_runs_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    _save(_legacy_layers(6), src)
    (src / ".metadata").write_bytes(pickle.dumps(_Evil()))
    monkeypatch.chdir(tmp_path)
    assert cli(["upgrade", str(src), "--dry-run"]) == 1
    assert "refusing to unpickle the DCP metadata: it names posix.system" in capsys.readouterr().err
    assert not (tmp_path / "pwned").exists()


def test_a_metadata_pickle_cannot_change_an_allowed_class(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import pathlib

    src = tmp_path / "src"
    _save(_legacy_layers(7), src)
    original = (src / ".metadata").read_bytes()
    assert original[:1] == b"\x80"
    # GLOBAL pathlib.PosixPath; BUILD (None, {"exists": TensorProperties}); POP; then the
    # real metadata: the C unpickler would setattr on the class for the whole process
    tamper = (
        b"\x80\x04cpathlib\nPosixPath\nN}X\x06\x00\x00\x00exists"
        b"ctorch.distributed.checkpoint.metadata\nTensorProperties\ns\x86b0"
    )
    (src / ".metadata").write_bytes(tamper + original[2:])
    exists = pathlib.PosixPath.exists
    assert cli(["upgrade", str(src), "--dry-run"]) == 1
    assert "BUILD on PosixPath" in capsys.readouterr().err
    assert pathlib.PosixPath.exists is exists
    assert not pathlib.Path(tmp_path / "nothing-here").exists()


def test_dcp_never_reads_the_metadata_itself(tmp_path: Path) -> None:
    # a transformed item is read through DCP's own loader, which would pickle.load
    # .metadata again and, where that fails, an unchecked __0.metadata: make .metadata
    # readable by Python's unpickler only (FLOAT "1_0"), and __0.metadata a payload
    src = tmp_path / "src"
    _save({"w": torch.ones(2)}, src)
    metadata = FileSystemReader(str(src)).read_metadata()
    for info in metadata.storage_data.values():
        info.transform_descriptors = ["compat-test-codec"]
    body = pickle.dumps(metadata, protocol=2)
    (src / ".metadata").write_bytes(body[:-1] + b"F1_0\n0.")
    marker = tmp_path / "marker"
    (src / "__0.metadata").write_bytes(pickle.dumps(_Payload(marker), protocol=2))
    with pytest.raises(compat.CheckpointError):
        compat.load_legacy(src)  # the made-up codec cannot be decoded
    assert not marker.exists()


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch '{self.marker}'",))


def test_a_metadata_pickle_cannot_change_an_enum_member(tmp_path: Path) -> None:
    from torch.distributed.checkpoint.metadata import _MEM_FORMAT_ENCODING

    src = tmp_path / "src"
    _save(_legacy_layers(8), src)
    original = (src / ".metadata").read_bytes()
    member = b"ctorch.distributed.checkpoint.metadata\n_MEM_FORMAT_ENCODING\nK\x00\x85R"
    build = b"}X\x07\x00\x00\x00_value_K\x01sb0"  # BUILD {"_value_": 1}; POP
    (src / ".metadata").write_bytes(original[:2] + member + build + original[2:])
    value = _MEM_FORMAT_ENCODING.TORCH_CONTIGUOUS_FORMAT.value
    with pytest.raises(compat.CheckpointError, match="BUILD on _MEM_FORMAT_ENCODING"):
        compat.load_legacy(src)
    assert _MEM_FORMAT_ENCODING.TORCH_CONTIGUOUS_FORMAT.value == value


def test_to_is_refused_for_other_sources_and_safetensors_refuses_objects(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pt = tmp_path / "x.pt"
    torch.save(_legacy_layers(), pt)
    assert cli(["upgrade", str(pt), str(tmp_path / "y"), "--to", "dcp"]) == 2
    assert (
        "format conversion is supported from a torch.distributed.checkpoint"
        in capsys.readouterr().err
    )
    _save({**_legacy_layers(), "step": 1}, tmp_path / "src")
    assert (
        cli(
            [
                "upgrade",
                str(tmp_path / "src"),
                str(tmp_path / "o.safetensors"),
                "--to",
                "safetensors",
            ]
        )
        == 2
    )
    assert "non-tensor entries (step)" in capsys.readouterr().err


KILL = r"""
import sys
from compat.cli import main
sys.exit(main(["upgrade", sys.argv[1], sys.argv[2], "-q"]))
"""


@pytest.mark.slow
def test_sigkill_leaves_dst_old_or_absent(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(7)
    state = {}
    for i in range(12):  # ~50 MB of float weights (F4) to restore
        state[f"l{i}.weight"] = torch.randint(-128, 128, (512, 2048), generator=g).float()
        state[f"l{i}.scale"] = torch.rand(512, generator=g) * 1e-3
        state[f"l{i}.offset"] = torch.zeros(512)
    src = tmp_path / "src"
    _save(state, src)
    before = _digests(src)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    for attempt, delay in enumerate((0.3, 0.8, 1.5, 2.5)):
        dst = tmp_path / f"dst{attempt}"
        proc = subprocess.Popen([sys.executable, "-c", KILL, str(src), str(dst)], env=env, cwd=ROOT)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if dst.exists():  # complete and valid, never partial
            out = compat.load_legacy(dst)
            assert all(out[f"l{i}.weight"].dtype == torch.int8 for i in range(12))
            assert torch.equal(out["l3.weight"].float(), state["l3.weight"])
        assert _digests(src) == before
    # a rerun for the same destination removes what the killed run left, then converts
    for attempt in range(4):
        dst = tmp_path / f"dst{attempt}"
        if not dst.exists():
            assert cli(["upgrade", str(src), str(dst), "-q"]) == 0
    assert not [p for p in tmp_path.iterdir() if "compat-tmp" in p.name]


def test_torch_distributed_checkpoint_is_imported_only_for_a_dcp_source(tmp_path: Path) -> None:
    """It takes about a second to import; a command on another format must not pay it."""
    _save(_legacy_layers(), tmp_path / "src")
    torch.save(_legacy_layers(), tmp_path / "legacy.pt")
    probe = (
        "import sys\n"
        "from compat.cli import main\n"
        "loaded = lambda: 'dcp-loaded=%s' % ('torch.distributed.checkpoint' in sys.modules)\n"
        "assert main(['upgrade', sys.argv[1], sys.argv[2], '-q']) == 0\n"
        "print(loaded())\n"
        "assert main(['upgrade', sys.argv[3], sys.argv[4], '-q']) == 0\n"
        "print(loaded())\n"
    )
    args = [tmp_path / "legacy.pt", tmp_path / "out.pt", tmp_path / "src", tmp_path / "dst"]
    out = subprocess.run(
        [sys.executable, "-c", probe, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    flags = [line for line in out.stdout.split() if line.startswith("dcp-loaded=")]
    assert flags == ["dcp-loaded=False", "dcp-loaded=True"]
    assert (tmp_path / "dst" / ".metadata").is_file()


# --------------------------------------------------------------------------- streaming reads
def _saved(value: Any, **kwargs: Any) -> io.BytesIO:
    buf = io.BytesIO()
    torch.save(value, buf, **kwargs)
    return buf


@pytest.mark.parametrize(
    "tensor",
    [
        torch.arange(12, dtype=torch.float32).reshape(3, 4),
        torch.arange(-6, 6, dtype=torch.int64).reshape(2, 1, 6),
        torch.tensor([1.5, -2.25, 3.0], dtype=torch.bfloat16),
        torch.randint(-128, 128, (5, 7), dtype=torch.int8),
        torch.tensor([True, False, True]),
        torch.tensor(3.0),
        torch.zeros(0, 4, dtype=torch.int32),
    ],
    ids=["f32", "i64-3d", "bf16", "i8", "bool", "0-d", "empty"],
)
def test_stored_tensor_finds_the_bytes_of_a_plain_tensor(tensor: torch.Tensor) -> None:
    buf = _saved(tensor)
    found = torchfile.stored_tensor(buf)
    assert found is not None
    assert found.dtype == tensor.dtype and found.shape == tuple(tensor.shape)
    raw = buf.getvalue()[found.start : found.start + found.nbytes]
    assert raw == tensor.reshape(-1).view(torch.uint8).numpy().tobytes()


def _big_endian_copy(buf: io.BytesIO) -> io.BytesIO:
    out = io.BytesIO()
    with zipfile.ZipFile(buf) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info.filename, b"big" if info.filename.endswith("/byteorder") else data)
    return out


@pytest.mark.parametrize(
    "make",
    [
        lambda: _saved(torch.arange(12.0).reshape(3, 4).t()),  # non-contiguous
        lambda: _saved(torch.arange(12.0)[2:]),  # a view into a larger storage
        lambda: _saved(torch.nn.Parameter(torch.ones(3))),  # another rebuild function
        lambda: _saved({"a": torch.ones(3)}),  # not one tensor
        lambda: _saved(torch.ones(3), _use_new_zipfile_serialization=False),  # legacy format
        lambda: _big_endian_copy(_saved(torch.arange(4.0))),
        lambda: io.BytesIO(b"PK\x03\x04 not a zip at all"),
    ],
    ids=["transposed", "offset-view", "parameter", "dict", "legacy", "big-endian", "garbage"],
)
def test_stored_tensor_is_none_for_anything_else(make: Any) -> None:
    assert torchfile.stored_tensor(make()) is None


def test_non_plain_and_multi_rank_items_convert_equal(tmp_path: Path) -> None:
    """A transposed (non-contiguous) tensor is read by torch.load, not from its bytes; the
    result is the same whichever way a tensor is read, and equal chunk by chunk."""
    legacy = _legacy_layers(4)
    g = torch.Generator().manual_seed(4)
    extra = torch.randint(-1000, 1000, (6, 9), dtype=torch.int32, generator=g).t()
    _save({**legacy, "other.transposed": extra}, tmp_path / "src")
    assert cli(["upgrade", str(tmp_path / "src"), str(tmp_path / "dst"), "-q"]) == 0
    out = _read_output(tmp_path / "dst", "dcp")
    assert torch.equal(out["other.transposed"], extra)
    _check_against_oracle(out, legacy)
    reader = dcp_format._Reader(tmp_path / "src")
    for key in reader.tensor_keys:
        whole = reader.tensor(key).reshape(-1)
        streamed = torch.cat([c.clone() for c in dcp_format._Reader(tmp_path / "src").chunks(key)])
        assert torch.equal(streamed, whole), key


def test_unchanged_tensors_are_copied_byte_for_byte(tmp_path: Path) -> None:
    legacy = _legacy_layers(5)
    _save(legacy, tmp_path / "src")
    assert cli(["upgrade", str(tmp_path / "src"), str(tmp_path / "dst"), "-q"]) == 0
    src, dst = (FileSystemReader(str(tmp_path / d)).read_metadata() for d in ("src", "dst"))

    def item(path: Path, meta: Any, key: str) -> bytes:
        (info,) = [v for k, v in meta.storage_data.items() if k.fqn == key]
        with open(path / info.relative_path, "rb") as f:
            f.seek(info.offset)
            return f.read(info.length)

    # a.weight and c.weight are int8 already; b.weight (float32) is converted
    for key in ("a.weight", "c.weight", "a.bias"):
        assert item(tmp_path / "dst", dst, key) == item(tmp_path / "src", src, key), key
    assert item(tmp_path / "dst", dst, "b.weight") != item(tmp_path / "src", src, "b.weight")


_PEAK = r"""
import json, sys
import torch.distributed.checkpoint
from compat.cli import main

def peak():  # VmHWM: ru_maxrss would include the forking test process's RSS
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))

before = peak()
assert main(["upgrade", sys.argv[1], sys.argv[2], "-q", "--to", sys.argv[3]]) == 0
print(json.dumps({"before": before, "after": peak()}))
"""


@pytest.mark.parametrize("target", ["dcp", "sharded"])
def test_peak_memory_stays_below_the_largest_tensor(tmp_path: Path, target: str) -> None:
    """Issue 14: peak RSS <= the largest tensor + 10 % (net of the interpreter). A 96 MiB
    float32 weight (converted to int8) and a 48 MiB int8 one (kept)."""
    if not Path("/proc/self/status").is_file():
        pytest.skip("peak RSS of a process is read from /proc/self/status (Linux)")
    g = torch.Generator().manual_seed(6)
    n, k = 2048, 12288
    big = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=g)
    state = {
        "a.weight": big.float(),
        "a.scale": (torch.rand(n, generator=g) + 0.5) * 1e-3,
        "a.bias": torch.zeros(n, dtype=torch.int32),
        "b.weight": torch.randint(-128, 128, (n, k // 2), dtype=torch.int8, generator=g),
        "b.scale": torch.from_numpy(
            oracle.encode((torch.rand(n, generator=g).numpy() + 0.5) * 1e-3, np.zeros(n)).astype(
                np.int64
            )
        ),
    }
    largest = state["a.weight"].numel() * 4
    _save(state, tmp_path / "src")
    del state
    out = subprocess.run(
        [sys.executable, "-c", _PEAK, str(tmp_path / "src"), str(tmp_path / "dst"), target],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    rss = json.loads(out.stdout.strip().splitlines()[-1])
    grown = rss["after"] - rss["before"]
    assert grown <= 1.1 * largest, f"peak grew by {grown / 2**20:.0f} MiB"
    converted = _read_output(tmp_path / "dst", target)
    assert converted["a.weight"].dtype == torch.int8
    assert torch.equal(converted["a.weight"], big)


# --------------------------------------------------------------------------- --jobs
def _many_layers(seed: int, copies: int) -> dict[str, torch.Tensor]:
    """``copies`` renamed sets of :func:`_legacy_layers` (enough tensors for two workers)."""
    out: dict[str, torch.Tensor] = {}
    for i in range(copies):
        out.update({f"m{i}.{k}": v for k, v in _legacy_layers(seed + i).items()})
    return out


def test_jobs_two_writes_the_same_bytes_as_jobs_one(tmp_path: Path) -> None:
    legacy = _many_layers(20, 3)
    _save({**legacy, "step": 11}, tmp_path / "src")
    before = _digests(tmp_path / "src")
    for jobs in ("1", "2"):
        dst = tmp_path / f"jobs{jobs}"
        assert cli(["upgrade", str(tmp_path / "src"), str(dst), "-q", "--jobs", jobs]) == 0
    assert _digests(tmp_path / "jobs2") == _digests(tmp_path / "jobs1")
    assert _digests(tmp_path / "src") == before
    out = _read_output(tmp_path / "jobs2", "dcp")
    assert out["step"] == 11
    for i in range(3):
        mine = {k.removeprefix(f"m{i}."): v for k, v in out.items() if k.startswith(f"m{i}.")}
        _check_against_oracle(mine, _legacy_layers(20 + i))


def test_a_failing_worker_leaves_dst_absent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An item that cannot be read (its bytes overwritten after planning) fails its worker:
    exit 1 naming the tensor, DST absent, no staging directory left, the source intact."""
    _save(_many_layers(30, 3), tmp_path / "src")
    meta = FileSystemReader(str(tmp_path / "src")).read_metadata()
    (info,) = [v for k, v in meta.storage_data.items() if k.fqn == "m2.b.weight"]
    real_plan = dcp_format.plan_state_dict

    def plan_then_corrupt(*args: Any, **kwargs: Any) -> Any:
        report = real_plan(*args, **kwargs)
        with open(tmp_path / "src" / info.relative_path, "r+b") as f:
            f.seek(info.offset)
            f.write(b"\0" * info.length)
        return report

    dcp_format.plan_state_dict = plan_then_corrupt  # type: ignore[assignment]
    try:
        code = cli(["upgrade", str(tmp_path / "src"), str(tmp_path / "dst"), "--jobs", "2"])
    finally:
        dcp_format.plan_state_dict = real_plan  # type: ignore[assignment]
    assert code == 1
    assert "m2.b.weight" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_float_weight_that_is_not_int8_fails_like_a_dry_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], jobs: str
) -> None:
    """Float weights are checked while they are written (planning defers it); one value
    that is not an int8 integer fails the conversion with the dry run's full report."""
    legacy = _many_layers(40, 3)
    bad = legacy["m1.b.weight"].clone()
    bad.view(-1)[5] = 0.5
    legacy["m1.b.weight"] = bad
    _save(legacy, tmp_path / "src")
    assert cli(["upgrade", str(tmp_path / "src"), "--dry-run"]) == 1
    dry = capsys.readouterr().err
    assert "m1.b" in dry and "0.5" in dry
    code = cli(["upgrade", str(tmp_path / "src"), str(tmp_path / "dst"), "--jobs", jobs])
    assert code == 1
    err = capsys.readouterr().err
    assert "m1.b" in err and "0.5" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
