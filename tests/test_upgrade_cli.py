"""``python -m compat upgrade``: options, exit codes, atomic writes, backups, security and
reliability (SIGKILL at random points, write failures, corrupt inputs)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import ROOT

import compat
from compat.checkpoint import atomic as _atomic
from compat.checkpoint.files import torchfile
from compat.cli import main as cli
from compat.formats import rules as _rules

DATA = Path(__file__).resolve().parent / "data"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def f4_state(n: int = 8, k: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    """A legacy F4 state_dict (float weight holding int8 values) with a float layer."""
    g = torch.Generator().manual_seed(seed)
    return {
        "fc.weight": torch.randint(-128, 128, (n, k), generator=g).float(),
        "fc.scale": torch.rand(n, generator=g) * 0.01,
        "fc.bias": torch.arange(n, dtype=torch.int32),
        "norm.weight": torch.ones(k),
    }


def run_cli(
    *args: str, env: dict[str, str] | None = None, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TORCH_NPU_STANDIN")}
    full_env.pop("PYTHONPATH", None)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "compat", "upgrade", *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
        **kwargs,
    )


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".compat-tmp-" in p.name)


# --------------------------------------------------------------------------- usage
@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["{src}"], "give DST, --in-place or --dry-run"),
        (["{src}", "{tmp}/o.pt", "--in-place"], "either DST or --in-place"),
        (["{src}", "--in-place", "--dry-run"], "cannot be combined"),
        (["{tmp}/missing.pt", "{tmp}/o.pt"], "no such file"),
        (["{src}", "{src}"], "use --in-place"),
        (["{src}", "{tmp}/o.safetensors"], "format conversion is not supported"),
        (["{src}", "{tmp}/no/such/dir/o.pt"], "no such directory"),
        (["{src}", "{tmp}/o.pt", "--output-dtype", "float64"], "unknown dtype"),
        (
            ["{src}", "{tmp}/o.pt", "--output-dtype", "int8", "--output-dtype", "fc=int8"],
            "not both",
        ),
        (
            ["{src}", "{tmp}/o.pt", "--output-dtype", "nope=int8"],
            "'nope', which is not a quant linear",
        ),
        (["{src}", "--no-such-option"], ""),
    ],
)
def test_usage_errors_exit_2_and_write_nothing(
    args: list[str], words: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "src.pt"
    torch.save(f4_state(), src)
    before = sha256(src)
    argv = [a.format(src=src, tmp=tmp_path) for a in args]
    assert cli(["upgrade", *argv]) == 2
    assert words in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.pt"] and sha256(src) == before


def test_sharded_destination_must_be_new(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    assert cli(["upgrade", str(DATA / "f2_sharded"), str(tmp_path / "busy")]) == 2
    assert "new or empty directory" in capsys.readouterr().err


# --------------------------------------------------------------------------- modes
def test_dry_run_reports_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "src.pt"
    torch.save(f4_state(), src)
    assert cli(["upgrade", str(src), "--dry-run", "-v"]) == 0
    out = capsys.readouterr().out
    assert "fc [F4]" in out and "restored" in out and "dry run: would convert" in out
    assert cli(["upgrade", str(src), "--dry-run"]) == 0  # default: the summary
    out = capsys.readouterr().out
    assert "1 layer [F4]: weight float32 -> int8 restored" in out and "fc [F4]" not in out
    assert cli(["upgrade", str(src), str(tmp_path / "o.pt"), "--dry-run", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (
        report["status"] == "would-convert"
        and report["changed"] is True
        and report["written"] == []
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.pt"]


def test_convert_writes_verified_output_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, dst = tmp_path / "src.pt", tmp_path / "dst.pt"
    state = f4_state()
    torch.save({"state_dict": state, "epoch": 7, "names": ["a", "b"]}, src)  # a wrapper dict
    assert cli(["upgrade", str(src), str(dst), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "converted" and report["verified"] is True
    assert report["state_dicts"][0]["location"] == "['state_dict']"
    out = torch.load(dst, weights_only=True)
    assert out["epoch"] == 7 and out["names"] == ["a", "b"]
    assert out["state_dict"]["fc.weight"].dtype == torch.int8
    assert torch.equal(out["state_dict"]["fc.weight"].float(), state["fc.weight"])
    for key in ("fc.scale", "fc.bias", "norm.weight"):
        assert torch.equal(out["state_dict"][key], state[key])
    assert leftovers(tmp_path) == []


def test_legacy_serialization_source_becomes_zip(tmp_path: Path) -> None:
    src, dst = tmp_path / "old.pt", tmp_path / "new.pt"
    torch.save(f4_state(), src, _use_new_zipfile_serialization=False)
    assert cli(["upgrade", str(src), str(dst)]) == 0
    import zipfile

    assert not zipfile.is_zipfile(src) and zipfile.is_zipfile(dst)
    assert torch.load(dst, weights_only=True)["fc.weight"].dtype == torch.int8


def test_in_place_keeps_a_backup_and_never_overwrites_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "model.pt"
    torch.save(f4_state(), src)
    original = sha256(src)
    assert cli(["upgrade", str(src), "--in-place"]) == 0
    bak = tmp_path / "model.pt.bak"
    assert sha256(bak) == original
    assert torch.load(src, weights_only=True)["fc.weight"].dtype == torch.int8
    converted = sha256(src)
    # already current: nothing is written, the backup is left alone
    assert cli(["upgrade", str(src), "--in-place"]) == 0
    assert "already current" in capsys.readouterr().out
    assert sha256(src) == converted and sha256(bak) == original
    # a new legacy file with a backup in the way: refused, nothing touched
    torch.save(f4_state(seed=3), src)
    legacy = sha256(src)
    assert cli(["upgrade", str(src), "--in-place"]) == 1
    assert "model.pt.bak already exists" in capsys.readouterr().err
    assert sha256(src) == legacy and sha256(bak) == original
    assert leftovers(tmp_path) == []


def test_error_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["upgrade", str(DATA / "f4_half.pt"), str(tmp_path / "o.pt"), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "error" and report["exit_code"] == 1
    assert len(report["problems"]) >= 4 and all("float16" in p for p in report["problems"])


def test_safetensors_keeps_order_and_metadata(tmp_path: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    src, dst = tmp_path / "m.safetensors", tmp_path / "o.safetensors"
    state = f4_state()
    save_file(state, str(src), metadata={"format": "pt", "note": "legacy"})
    assert cli(["upgrade", str(src), str(dst)]) == 0
    with safe_open(str(dst), framework="pt") as f:
        assert f.metadata() == {"format": "pt", "note": "legacy"}
        assert list(f.keys()) == sorted(state)  # the package's own (sorted) key order
        out = {k: f.get_tensor(k) for k in f.keys()}
    assert out["fc.weight"].dtype == torch.int8 and torch.equal(
        out["fc.weight"].float(), state["fc.weight"]
    )
    assert torch.equal(out["fc.scale"], state["fc.scale"]) and torch.equal(
        out["norm.weight"], state["norm.weight"]
    )


def test_safetensors_bad_float_weight_found_while_streaming(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Conversion checks float weights while writing; a bad value aborts and every problem
    is still listed, as in a dry run."""
    from safetensors.torch import save_file

    state = f4_state()
    state["fc.weight"][3, 5] = 0.25
    state["fc2.weight"] = f4_state(seed=1)["fc.weight"].index_fill_(0, torch.tensor([2]), 300.0)
    state["fc2.scale"] = torch.ones(8)
    state["fc2.bias"] = torch.zeros(8, dtype=torch.int32)
    src, dst = tmp_path / "m.safetensors", tmp_path / "o.safetensors"
    save_file(state, str(src))
    for extra in ([], ["--dry-run"]):
        assert cli(["upgrade", str(src), str(dst), *extra]) == 1
        err = capsys.readouterr().err
        assert (
            "2 problems" in err and "0.25 at index [3, 5]" in err and "300.0 at index [2, 0]" in err
        )
        assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_sharded_to_directory_and_in_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "ckpt"
    shutil.copytree(DATA / "f2_sharded", src)
    index_before = json.loads((src / "model.safetensors.index.json").read_text())
    dst = tmp_path / "out"
    assert (
        cli(
            [
                "upgrade",
                str(src / "model.safetensors.index.json"),
                str(dst),
                "--output-dtype",
                "blocks.1.mlp=bf16",
            ]
        )
        == 0
    )
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == index_before["weight_map"]
    # two float32 scales replaced two int64 ones: 4 bytes less per element
    shrink = 4 * (8 + 12)
    assert index["metadata"]["total_size"] == index_before["metadata"]["total_size"] - shrink
    assert sorted(p.name for p in dst.iterdir()) == sorted(p.name for p in src.iterdir())
    capsys.readouterr()
    # in place: only the rewritten shards and the index get a .bak
    assert (
        cli(["upgrade", str(src), "--in-place", "--output-dtype", "blocks.1.mlp=bf16", "--json"])
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    backups = sorted(Path(p).name for p in report["backups"])
    assert "model.safetensors.index.json.bak" in backups and len(backups) >= 2
    for name in backups:
        assert sha256(src / name) == sha256(DATA / "f2_sharded" / name[: -len(".bak")])
    shards = [p.name for p in dst.glob("*.safetensors")]
    for name in ["model.safetensors.index.json", *shards]:
        assert sha256(src / name) == sha256(dst / name), name  # same bytes as the DST run


def test_sharded_torch_bin_shards(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """pytorch_model-*.bin shards with one module split across them (F4 weight in shard 1)."""
    state = f4_state()
    src = tmp_path / "bin"
    src.mkdir()
    split = {
        "pytorch_model-00001-of-00002.bin": ["fc.weight", "norm.weight"],
        "pytorch_model-00002-of-00002.bin": ["fc.scale", "fc.bias"],
    }
    for name, keys in split.items():
        torch.save({k: state[k] for k in keys}, src / name)
    weight_map = {k: name for name, keys in split.items() for k in keys}
    total = sum(v.numel() * v.element_size() for v in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (src / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    dst = tmp_path / "out"
    assert cli(["upgrade", str(src), str(dst), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [
        k["key"]
        for g in report["state_dicts"][0]["groups"]
        for k in g["keys"]
        if k["action"] == "restored"
    ] == ["fc.weight"]
    first = torch.load(dst / "pytorch_model-00001-of-00002.bin", weights_only=True)
    assert first["fc.weight"].dtype == torch.int8 and torch.equal(
        first["fc.weight"].float(), state["fc.weight"]
    )
    second = torch.load(dst / "pytorch_model-00002-of-00002.bin", weights_only=True)
    assert sha256(dst / "pytorch_model-00002-of-00002.bin") == sha256(
        src / "pytorch_model-00002-of-00002.bin"
    )
    assert set(second) == {"fc.scale", "fc.bias"}
    new_index = json.loads((dst / "pytorch_model.bin.index.json").read_text())
    assert new_index["metadata"]["total_size"] == total - 3 * 8 * 16  # float32 -> int8 weight
    # merged and upgraded by load_legacy too
    merged = compat.load_legacy(src / "pytorch_model.bin.index.json")
    assert merged["fc.weight"].dtype == torch.int8 and set(merged) == set(state)


def test_in_place_safetensors_and_trusted_module_pickle(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    st = tmp_path / "m.safetensors"
    save_file(f4_state(), str(st))
    original = sha256(st)
    assert cli(["upgrade", str(st), "--in-place"]) == 0
    assert sha256(tmp_path / "m.safetensors.bak") == original
    assert load_file(str(st))["fc.weight"].dtype == torch.int8
    pickled = tmp_path / "model.pt"
    shutil.copy(DATA / "module_pickle.pt", pickled)
    assert cli(["upgrade", str(pickled), "--in-place"]) == 1  # refused without trust
    assert not (tmp_path / "model.pt.bak").exists()
    assert cli(["upgrade", str(pickled), "--in-place", "--trust-pickle"]) == 0
    assert sha256(tmp_path / "model.pt.bak") == sha256(DATA / "module_pickle.pt")
    state = torch.load(pickled, weights_only=True)  # now a plain state_dict
    assert state["q.weight"].dtype == torch.int8 and state["head.weight"].dtype == torch.int8


def test_progress_bar_on_request(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "m.pt"
    torch.save(f4_state(), src)
    assert cli(["upgrade", str(src), str(tmp_path / "a.pt")]) == 0
    assert "\r" not in capsys.readouterr().err  # auto: not a terminal
    assert cli(["upgrade", str(src), str(tmp_path / "b.pt"), "--progress", "always"]) == 0
    err = capsys.readouterr().err
    assert "\rwriting" in err and "100%" in err and err.endswith("\n")


# --------------------------------------------------------------------------- security
class _PlainRecord:
    """A class comparing by identity only, as most classes of training scripts do."""

    def __init__(self, step: int) -> None:
        self.step = step


def test_a_torch_file_with_a_bytes_buffer_converts_without_trust(tmp_path: Path) -> None:
    import io

    src = tmp_path / "ckpt.pt"
    buffer = io.BytesIO(b"losses\x00\xff")
    buffer.seek(3)
    torch.save({"state_dict": f4_state(), "train_state": buffer, "epoch": 2}, src)
    assert cli(["upgrade", str(src), str(tmp_path / "o.pt"), "-q"]) == 0
    out = compat.load_legacy(tmp_path / "o.pt")
    assert out["train_state"].getvalue() == b"losses\x00\xff" and out["train_state"].tell() == 3
    assert out["state_dict"]["fc.weight"].dtype == torch.int8 and out["epoch"] == 2


def test_a_trusted_object_comparing_by_identity_is_verified_by_its_state(tmp_path: Path) -> None:
    src = tmp_path / "ckpt.pt"
    torch.save({"state_dict": f4_state(), "record": _PlainRecord(4)}, src)
    args = ["upgrade", str(src), str(tmp_path / "o.pt"), "-q"]
    assert cli(args) == 1  # refused without trust
    assert cli([*args, "--trust-pickle"]) == 0
    out = compat.load_legacy(tmp_path / "o.pt", trust_pickle=True)
    assert type(out["record"]).__name__ == "_PlainRecord" and out["record"].step == 4
    assert out["state_dict"]["fc.weight"].dtype == torch.int8


class _Payload:
    """Creates ``marker`` when unpickled: proves what runs and what does not."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch '{self.marker}'",))


@pytest.mark.parametrize("zip_format", [True, False])
@pytest.mark.parametrize("protocol", [4, 5])
def test_pickle_protocols_4_and_5_are_refused_unless_trusted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], protocol: int, zip_format: bool
) -> None:
    # torch's weights-only reader cannot read them, and no other reader here is safe
    # enough (a full unpickler runs payloads; see tests/test_dcp.py for BUILD tampering)
    state = f4_state(seed=protocol)
    save = {"pickle_protocol": protocol, "_use_new_zipfile_serialization": zip_format}
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pt"
    torch.save({**state, "x": _Payload(marker)}, evil, **save)
    plain = tmp_path / "plain.pt"
    torch.save(state, plain, **save)
    for src in (evil, plain):
        for args in ([str(src), "--dry-run"], [str(src), str(tmp_path / "o.pt")]):
            assert cli(["upgrade", *args]) == 1
            err = capsys.readouterr().err
            assert (
                f"{src}: refusing to unpickle it: it is written with pickle protocol 4 or 5" in err
            )
            assert "--trust-pickle" in err
        with pytest.raises(compat.CheckpointError, match="pickle protocol 4 or 5"):
            compat.load_legacy(src)
    assert not marker.exists() and not (tmp_path / "o.pt").exists()
    assert cli(["upgrade", str(plain), str(tmp_path / "o.pt"), "-q", "--trust-pickle"]) == 0
    out = compat.load_legacy(tmp_path / "o.pt")  # written with the default protocol
    assert out["fc.weight"].dtype == torch.int8
    assert torch.equal(out["fc.weight"].double(), state["fc.weight"].double())
    cli(["upgrade", str(evil), "--dry-run", "--trust-pickle"])  # control: the payload is live
    assert marker.exists()


def test_a_legacy_format_file_whose_header_pickles_are_protocol_4_runs_nothing(
    tmp_path: Path,
) -> None:
    # torch's legacy format starts with small pickles (magic number, protocol, system
    # info) read before the data: a payload there must not run either
    import pickle

    marker = tmp_path / "marker"
    src = tmp_path / "legacy.pt"
    src.write_bytes(pickle.dumps(_Payload(marker), protocol=4))
    assert cli(["upgrade", str(src), "--dry-run"]) == 1
    with pytest.raises(compat.CheckpointError):
        compat.load_legacy(src)
    assert not marker.exists()


def test_state_dicts_two_levels_down_are_named_in_the_refusal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "deep.pt"
    torch.save({"model": {"backbone": f4_state(), "head": f4_state(seed=1)}}, src)
    assert cli(["upgrade", str(src), "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert "no state_dict found" in err
    assert "state_dicts two levels down (['model']['backbone'], ['model']['head'])" in err


def test_state_dicts_under_integer_keys_keep_their_keys(tmp_path: Path) -> None:
    first, second = f4_state(seed=1), f4_state(seed=2)
    src = tmp_path / "ensemble.pt"
    torch.save({0: first, 1: second, "epoch": 1}, src)
    assert cli(["upgrade", str(src), "--dry-run", "-q"]) == 0
    assert cli(["upgrade", str(src), str(tmp_path / "o.pt"), "-q"]) == 0
    out = torch.load(tmp_path / "o.pt", weights_only=True)
    assert list(out) == [0, 1, "epoch"]
    for key, want in ((0, first), (1, second)):
        assert out[key]["fc.weight"].dtype == torch.int8
        assert torch.equal(out[key]["fc.weight"].double(), want["fc.weight"].double())
    assert list(compat.load_legacy(src)) == [0, 1, "epoch"]


def test_verification_still_tells_objects_of_another_state_apart() -> None:
    import io

    from compat.checkpoint.pages import PageReleaser

    checker = torchfile._Verifier(None, PageReleaser(Path("x"), enabled=False), None)
    checker.value("same", io.BytesIO(b"a"), io.BytesIO(b"a"))
    for want, got in [
        (io.BytesIO(b"a"), io.BytesIO(b"b")),
        (_PlainRecord(1), _PlainRecord(2)),
        (_PlainRecord(1), io.BytesIO(b"a")),
    ]:
        with pytest.raises(compat.CheckpointError, match="differs after writing"):
            checker.value("x", want, got)


@pytest.mark.parametrize("name", ["malicious.pt", "malicious.pkl"])
def test_malicious_pickle_never_runs_without_trust(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "marker"
    env = {"COMPAT_PICKLE_MARKER": str(marker)}
    for args in ([str(DATA / name), str(tmp_path / "o.pt")], [str(DATA / name), "--dry-run"]):
        done = run_cli(*args, env=env)
        assert done.returncode == 1, done.stderr
        assert "refusing to unpickle" in done.stderr and "posix.system" in done.stderr
        assert "do not trust this file" in done.stderr
        assert not marker.exists()
    monkeypatch.setenv("COMPAT_PICKLE_MARKER", str(marker))
    with pytest.raises(compat.CheckpointError, match="refusing to unpickle"):
        compat.load_legacy(DATA / name)
    assert not marker.exists()
    assert not (tmp_path / "o.pt").exists()
    # control: the payload is live, so the assertions above could have failed
    done = run_cli(str(DATA / name), str(tmp_path / "o.pt"), "--trust-pickle", env=env)
    assert marker.exists(), done.stderr


# --------------------------------------------------------------------------- corrupt inputs
def _corruptions(tmp_path: Path) -> list[tuple[str, Path]]:
    good = tmp_path / "good.pt"
    torch.save(f4_state(64, 64), good)
    data = good.read_bytes()
    import zipfile

    with zipfile.ZipFile(good) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith("/data/0"))
    name_len, extra_len = struct.unpack(
        "<HH", data[info.header_offset + 26 : info.header_offset + 30]
    )
    start = info.header_offset + 30 + name_len + extra_len + 100  # inside the record's data
    cases: dict[str, bytes] = {
        "truncated-10": data[: len(data) // 10],
        "truncated-50": data[: len(data) // 2],
        "truncated-tail": data[:-20],
        "flipped-tensor-byte": data[:start] + bytes([data[start] ^ 0xFF]) + data[start + 1 :],
        "garbage": bytes(range(256)) * 8,
        "empty": b"",
    }
    legacy = tmp_path / "legacy.pt"
    torch.save(f4_state(), legacy, _use_new_zipfile_serialization=False)
    cases["legacy-truncated"] = legacy.read_bytes()[:-100]
    st = tmp_path / "good.safetensors"
    from safetensors.torch import save_file

    save_file(f4_state(), str(st))
    raw = st.read_bytes()
    cases["st-truncated"] = raw[:-10]
    cases["st-bad-json"] = (
        raw[:8]
        + b"{"
        + b"x" * (int.from_bytes(raw[:8], "little") - 1)
        + raw[8 + int.from_bytes(raw[:8], "little") :]
    )
    out = []
    for label, content in cases.items():
        path = tmp_path / "in" / f"{label}.{'safetensors' if label.startswith('st-') else 'pt'}"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(content)
        out.append((label, path))
    return out


def test_truncated_and_corrupt_inputs_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outdir = tmp_path / "out"
    outdir.mkdir()
    for label, path in _corruptions(tmp_path):
        dst = outdir / path.name
        assert cli(["upgrade", str(path), str(dst)]) == 1, label
        err = capsys.readouterr().err
        assert err.startswith("upgrade: error: ") and str(path) in err, (label, err)
        assert any(w in err for w in ("corrupt", "truncated", "not a valid safetensors")), (
            label,
            err,
        )
        assert "Traceback" not in err
        assert list(outdir.iterdir()) == [], label
    # a shard missing from a sharded checkpoint
    broken = tmp_path / "sharded"
    shutil.copytree(DATA / "f2_sharded", broken)
    (broken / "model-00002-of-00002.safetensors").unlink()
    assert cli(["upgrade", str(broken), str(tmp_path / "o")]) == 1
    assert "is missing" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_flipped_tensor_byte_is_caught_by_load_legacy_too(tmp_path: Path) -> None:
    _label, path = next(c for c in _corruptions(tmp_path) if c[0] == "flipped-tensor-byte")
    assert torch.load(path, weights_only=True)  # plain torch.load does not notice
    with pytest.raises(compat.CheckpointError, match="Bad CRC-32"):
        compat.load_legacy(path)


# --------------------------------------------------------------------------- write failures
_FSIZE_LIMIT = """
import resource, runpy, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
sys.argv = ["compat", "upgrade", *sys.argv[1:]]
runpy.run_module("compat", run_name="__main__")
"""


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_disk_full_mid_write_leaves_nothing(fmt: str, tmp_path: Path) -> None:
    src, dst = tmp_path / f"src.{fmt}", tmp_path / "out" / f"dst.{fmt}"
    dst.parent.mkdir()
    state = f4_state(512, 1024)  # 2 MiB of float weight -> 512 KiB of int8
    if fmt == "pt":
        torch.save(state, src)
    else:
        from safetensors.torch import save_file

        save_file(state, str(src))
    before = sha256(src)
    code = _FSIZE_LIMIT.format(limit=200_000)
    done = subprocess.run(
        [sys.executable, "-c", code, str(src), str(dst)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr
    assert f"writing {dst} failed" in done.stderr and "File too large" in done.stderr, done.stderr
    assert list(dst.parent.iterdir()) == []  # no partial file, no temporary
    assert sha256(src) == before


def test_oserror_from_the_writer_is_reported_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    src, dst = tmp_path / "src.pt", tmp_path / "dst.pt"
    torch.save(f4_state(), src)
    real_save = torchfile.save

    def failing_save(obj: Any, out: Any, **kwargs: Any) -> None:
        out.write(b"PK\x03\x04 partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torchfile, "save", failing_save)
    assert cli(["upgrade", str(src), str(dst)]) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.pt"]
    monkeypatch.setattr(torchfile, "save", real_save)
    assert cli(["upgrade", str(src), str(dst)]) == 0


def test_stale_temporaries_of_dead_runs_are_removed(tmp_path: Path) -> None:
    src, dst = tmp_path / "src.pt", tmp_path / "dst.pt"
    torch.save(f4_state(), src)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = tmp_path / f".dst.pt.compat-tmp-{int(dead.stdout)}-abcd1234"
    alive = tmp_path / f".dst.pt.compat-tmp-{os.getpid()}-abcd1234"  # a live process's file
    stale.write_bytes(b"partial")
    alive.write_bytes(b"in use")
    assert cli(["upgrade", str(src), str(dst)]) == 0
    assert not stale.exists() and alive.exists()


# --------------------------------------------------------------------------- verification
def _merged_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if path.is_file():
        return load_file(str(path))
    merged: dict[str, torch.Tensor] = {}
    for shard in sorted(path.glob("*.safetensors")):
        merged.update(load_file(str(shard)))
    return merged


@pytest.mark.parametrize("layout", ["file", "sharded"])
def test_safetensors_decoded_scale_is_checked_against_the_documented_form(
    layout: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Verification re-reads each decoded scale and its source and checks the documented
    transformation (float32 bits = param & 0xFFFFE000, docs/ops.md §1.5), not only that the file
    holds the bytes the converter meant to write: a wrong decoder is caught."""
    from safetensors.torch import save_file

    if layout == "file":
        src = tmp_path / "f2.safetensors"
        save_file(
            torch.load(DATA / "f2_torchair.pt", map_location="cpu", weights_only=True), str(src)
        )
        dst = tmp_path / "out.safetensors"
    else:
        src, dst = DATA / "f2_sharded", tmp_path / "out"
    raw = _merged_safetensors(src)
    args = ["upgrade", str(src), str(dst), "--output-dtype", "blocks.0.attn.o=bfloat16"]
    assert cli(args) == 0  # the real decoder: converted and verified
    got = _merged_safetensors(dst)
    for key in ("blocks.0.attn.o.scale", "blocks.1.gate.scale"):
        assert raw[key].dtype == torch.int64 and got[key].dtype == torch.float32
        bits = got[key].view(torch.int32).to(torch.int64) & 0xFFFFFFFF
        assert torch.equal(bits, raw[key] & 0xFFFFE000), key
    shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
    capsys.readouterr()

    real = _rules.decode

    def doubled(param: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale, offset = real(param)
        return scale * 2, offset

    monkeypatch.setattr(_rules, "decode", doubled)
    assert cli(args) == 1
    err = capsys.readouterr().err
    assert "verification failed" in err and "is not the documented decoded form" in err, err
    assert not dst.exists() and leftovers(tmp_path) == []


# --------------------------------------------------------------------------- in-place failures
def _failing_replace(monkeypatch: pytest.MonkeyPatch, fail_on: set[int]) -> list[tuple[str, str]]:
    """Make the n-th calls of os.replace (1-based, as seen by compat's atomic writes) fail."""
    real = os.replace
    calls: list[tuple[str, str]] = []

    def replace(a: Any, b: Any) -> None:
        calls.append((str(a), str(b)))
        if len(calls) in fail_on:
            raise OSError(5, "Input/output error (injected)")
        real(a, b)

    monkeypatch.setattr(_atomic.os, "replace", replace)
    return calls


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_failed_in_place_replace_leaves_no_backup(
    fmt: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / f"model.{fmt}"
    if fmt == "pt":
        torch.save(f4_state(), src)
    else:
        from safetensors.torch import save_file

        save_file(f4_state(), str(src))
    before = sha256(src)
    _failing_replace(monkeypatch, {1})
    assert cli(["upgrade", str(src), "--in-place"]) == 1
    err = capsys.readouterr().err
    assert "nothing was written" in err and "(injected)" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name]  # no .bak, no temporary
    assert sha256(src) == before
    monkeypatch.undo()
    assert cli(["upgrade", str(src), "--in-place"]) == 0  # not refused by a stale backup
    assert sha256(tmp_path / f"{src.name}.bak") == before


SHARDED_ARGS = ["--in-place", "--output-dtype", "blocks.0.attn.o=bfloat16"]  # all 3 files change


def test_sharded_in_place_failure_restores_the_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The 2nd file replaced fails: the 1st is restored, every backup removed."""
    src = tmp_path / "ckpt"
    shutil.copytree(DATA / "f2_sharded", src)
    before = {p.name: sha256(p) for p in src.iterdir()}
    calls = _failing_replace(monkeypatch, {2})
    assert cli(["upgrade", str(src), *SHARDED_ARGS]) == 1
    err = capsys.readouterr().err
    assert "(injected)" in err and "the checkpoint is unchanged" in err, err
    assert calls[1][1] != calls[0][1]  # the failure came after one file was replaced
    assert {p.name: sha256(p) for p in src.iterdir()} == before  # same bytes, no .bak, no temp
    monkeypatch.undo()
    assert cli(["upgrade", str(src), *SHARDED_ARGS]) == 0  # a rerun is not refused
    assert sorted(p.name for p in src.iterdir() if p.name.endswith(".bak")) == sorted(
        f"{name}.bak" for name in before
    )
    for name, digest in before.items():
        assert sha256(src / f"{name}.bak") == digest and sha256(src / name) != digest


def test_sharded_in_place_failed_restore_names_the_state_of_every_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The 2nd replace fails and so does restoring the 1st file: the message says which
    file is converted (and where its original is) and which are original."""
    src = tmp_path / "ckpt"
    shutil.copytree(DATA / "f2_sharded", src)
    before = {p.name: sha256(p) for p in src.iterdir()}
    calls = _failing_replace(monkeypatch, {2, 3})
    assert cli(["upgrade", str(src), *SHARDED_ARGS]) == 1
    err = capsys.readouterr().err
    monkeypatch.undo()
    converted = Path(calls[0][1])
    assert calls[2] == (f"{converted}.bak", str(converted))  # the restore that failed
    assert f"{converted}: CONVERTED; its original is {converted}.bak" in err, err
    assert f"mv {converted}.bak {converted}" in err
    others = [src / name for name in before if name != converted.name]
    assert len(others) == 2
    for path in others:
        assert f"{path}: original (never replaced)" in err, err
    # the files are in the states the message gives
    assert sha256(converted) != before[converted.name]
    assert sha256(Path(f"{converted}.bak")) == before[converted.name]
    for path in others:
        assert sha256(path) == before[path.name] and not Path(f"{path}.bak").exists()
    assert leftovers(src) == []


# --------------------------------------------------------------------------- file modes
@pytest.mark.parametrize("kind", ["pt", "safetensors", "sharded"])
def test_in_place_keeps_the_permission_bits(kind: str, tmp_path: Path) -> None:
    if kind == "sharded":
        src = tmp_path / "ckpt"
        shutil.copytree(DATA / "f2_sharded", src)
        files = sorted(src.iterdir())
        args = [str(src), *SHARDED_ARGS]
    else:
        src = tmp_path / f"model.{kind}"
        if kind == "pt":
            torch.save(f4_state(), src)
        else:
            from safetensors.torch import save_file

            save_file(f4_state(), str(src))
        files = [src]
        args = [str(src), "--in-place"]
    modes = dict(zip(files, [0o600, 0o640, 0o604], strict=False))
    for path, mode in modes.items():
        os.chmod(path, mode)
    before = {path: sha256(path) for path in files}
    assert cli(["upgrade", *args]) == 0
    for path, mode in modes.items():
        assert sha256(path) != before[path]  # rewritten ...
        assert stat.S_IMODE(path.stat().st_mode) == mode, path  # ... with the source's mode
        assert sha256(Path(f"{path}.bak")) == before[path]


def test_dst_mode_new_default_and_existing_kept(tmp_path: Path) -> None:
    src, dst = tmp_path / "src.pt", tmp_path / "dst.pt"
    torch.save(f4_state(), src)
    os.chmod(src, 0o600)
    umask = os.umask(0o022)
    os.umask(umask)
    assert cli(["upgrade", str(src), str(dst)]) == 0
    assert stat.S_IMODE(dst.stat().st_mode) == 0o666 & ~umask  # a new DST: the default
    os.chmod(dst, 0o640)
    assert cli(["upgrade", str(src), str(dst)]) == 0  # an existing DST keeps its mode
    assert stat.S_IMODE(dst.stat().st_mode) == 0o640


# --------------------------------------------------------------------------- SIGKILL
@pytest.mark.slow
def test_sigkill_at_random_points_leaves_dst_absent_or_valid(tmp_path: Path) -> None:
    src = tmp_path / "src.pt"
    state = {
        f"l{i}.{k}": v
        for i in range(4)
        for k, v in f4_state(1024, 2048, seed=i).items()
        if k.startswith("fc.")
    }
    state = {k.replace(".fc", ""): v for k, v in state.items()}
    torch.save(state, src)  # 32 MiB of float weights
    before = sha256(src)
    expected = compat.upgrade_state_dict(state)
    dst = tmp_path / "out" / "dst.pt"
    dst.parent.mkdir()

    def valid(path: Path) -> bool:
        got = torch.load(path, weights_only=True)
        return list(got) == list(expected) and all(
            torch.equal(got[k], expected[k]) for k in expected
        )

    start = time.monotonic()
    assert run_cli(str(src), str(dst)).returncode == 0
    full = time.monotonic() - start
    assert valid(dst)
    dst.unlink()
    rng = random.Random(20261125)
    outcomes = {"absent": 0, "complete": 0}
    for fraction in sorted(rng.uniform(0.25, 1.1) for _ in range(7)):
        proc = subprocess.Popen(
            [sys.executable, "-m", "compat", "upgrade", str(src), str(dst)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(full * fraction)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert sha256(src) == before
        if dst.exists():
            assert valid(dst), fraction
            outcomes["complete"] += 1
            dst.unlink()
        else:
            outcomes["absent"] += 1
        names = [p.name for p in dst.parent.iterdir()]
        assert all(n.startswith(".dst.pt.compat-tmp-") for n in names), names
    # a run after the kills completes and removes what the killed runs left
    assert run_cli(str(src), str(dst)).returncode == 0 and valid(dst)
    assert [p.name for p in dst.parent.iterdir()] == ["dst.pt"]
    assert outcomes["absent"] >= 1, outcomes
