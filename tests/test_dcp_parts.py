"""A DCP conversion split across hosts (issue 14): ``upgrade SRC PART --only-shards
PATTERN`` over disjoint ``.distcp`` files, then ``python -m compat merge``. The merged
directory must be byte for byte the one-host conversion, and its tensors equal to the
oracle's once loaded into compat's modules."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from test_dcp import (
    SHARDED,
    _check_against_oracle,
    _digests,
    _legacy_layers,
    _many_layers,
    _saved_by_two_ranks,
)
from torch.distributed.checkpoint.filesystem import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

import compat
from compat.checkpoint.files import dcp as dcp_format
from compat.cli import main as cli

FILES = [f"__0_{i}.distcp" for i in range(4)]


def _four_files(path: Path, state: dict[str, object]) -> Path:
    """``state`` saved by one process into four ``.distcp`` files (DCP's writer threads)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process"
        dcp_save(state, storage_writer=FileSystemWriter(str(path), thread_count=4))
    assert sorted(p.name for p in path.glob("*.distcp")) == FILES
    return path


def _owner_by_hand(src: Path) -> dict[str, str]:
    """The documented rule, re-derived from DCP's own metadata reader: each item goes to
    the file holding most of its bytes, ties broken by CRC-32 of its name."""
    meta = FileSystemReader(str(src)).read_metadata()
    held: dict[str, dict[str, int]] = {}
    for index, info in meta.storage_data.items():
        files = held.setdefault(index.fqn, {})
        files[info.relative_path] = files.get(info.relative_path, 0) + info.length
    out = {}
    for key, files in held.items():
        best = sorted(f for f, n in files.items() if n == max(files.values()))
        out[key] = best[zlib.crc32(key.encode()) % len(best)]
    return out


def _split(owner: dict[str, str]) -> tuple[list[str], list[str]]:
    """Two disjoint sets of files, each owning at least one item."""
    used = sorted(set(owner.values()))
    assert len(used) >= 2, owner
    return used[: len(used) // 2], used[len(used) // 2 :]


def _patterns(names: list[str]) -> list[str]:
    return [arg for name in names for arg in ("--only-shards", name)]


def _loaded_parts(root: Path, name: str, count: int) -> dict[str, object]:
    state = compat.load_legacy(root / name)
    out = {}
    for i in range(count):
        out[i] = {k.removeprefix(f"m{i}."): v for k, v in state.items() if k.startswith(f"m{i}.")}
    out["step"] = state["step"]
    return out


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_parts_merged_are_the_one_host_conversion(
    tmp_path: Path, jobs: str, capsys: pytest.CaptureFixture[str]
) -> None:
    legacy = _many_layers(40, 3)
    src = _four_files(tmp_path / "src", {**legacy, "step": 7})
    before = _digests(src)
    owner = _owner_by_hand(src)
    first, second = _split(owner)
    assert cli(["upgrade", str(src), str(tmp_path / "whole"), "-q"]) == 0
    capsys.readouterr()
    work = tmp_path / "work"
    work.mkdir()
    for name, files in (("a", first), ("b", second)):
        args = ["upgrade", str(src), str(work / name), *_patterns(files), "--jobs", jobs]
        assert cli([*args, "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["shards"]["selected"] == files
        assert report["shards"]["of"] == 4
        assert report["status"] == "converted" and report["verified"]
        record = json.loads((work / name / dcp_format.PART_FILE).read_text())
        assert record["files"] == files and record["of"] == 4
        assert record["output_dtype"] == "none given"
        # the part's metadata lists exactly the items its files own
        mine = {k for k, f in owner.items() if f in files}
        assert set(FileSystemReader(str(work / name)).read_metadata().state_dict_metadata) == mine
        assert record["items"] == len(mine)
    assert _digests(src) == before  # source untouched
    assert cli(["merge", str(src), str(tmp_path / "merged"), str(work / "a"), str(work / "b")]) == 0
    assert "merged 2 part(s)" in capsys.readouterr().out
    assert _digests(tmp_path / "merged") == _digests(tmp_path / "whole")  # byte for byte
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged", "src", "whole", "work"]
    state = _loaded_parts(tmp_path, "merged", 3)
    assert state["step"] == 7
    for i in range(3):
        _check_against_oracle(state[i], _legacy_layers(40 + i))


def test_rank_files_of_an_fsdp_checkpoint_share_the_work(tmp_path: Path) -> None:
    """Tensors split evenly over two ranks' files (DTensor shards): the tie goes by the
    name's CRC-32, so each rank's file owns some; parts by rank merge to the whole."""
    src = _saved_by_two_ranks(SHARDED, tmp_path / "src")
    owner = dcp_format.item_files(dcp_format.read_metadata(src))
    assert owner == _owner_by_hand(src)
    sharded = FileSystemReader(str(src)).read_metadata().state_dict_metadata
    assert all(len(sharded[k].chunks) == 2 for k in ("a.weight", "b.weight", "c.weight"))
    assert set(owner.values()) == {"__0_0.distcp", "__1_0.distcp"}  # both get work
    assert cli(["upgrade", str(src), str(tmp_path / "whole"), "-q"]) == 0
    for rank in (0, 1):
        part = tmp_path / f"part{rank}"
        assert cli(["upgrade", str(src), str(part), "--only-shards", f"__{rank}_*", "-q"]) == 0
    parts = [str(tmp_path / "part0"), str(tmp_path / "part1")]
    assert cli(["merge", str(src), str(tmp_path / "merged"), *parts]) == 0
    assert _digests(tmp_path / "merged") == _digests(tmp_path / "whole")
    _check_against_oracle(compat.load_legacy(tmp_path / "merged"), _legacy_layers(9))


def test_item_files_follow_the_bytes(tmp_path: Path) -> None:
    """Items saved whole each belong to the one file holding them; every file the
    metadata names is one DCP wrote."""
    src = _four_files(tmp_path / "src", _many_layers(3, 2))
    meta = FileSystemReader(str(src)).read_metadata()
    where = {index.fqn: info.relative_path for index, info in meta.storage_data.items()}
    assert dcp_format.item_files(dcp_format.read_metadata(src)) == where
    assert dcp_format.data_files(dcp_format.read_metadata(src)) == FILES


def test_a_part_checks_the_float_weights_it_owns_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    legacy = _many_layers(50, 2)
    legacy["m1.b.weight"][1, 2] = 0.5  # m1.b: a float32 re-save; 0.5 is no int8 value
    src = _four_files(tmp_path / "src", legacy)
    owner = _owner_by_hand(src)
    bad = [owner["m1.b.weight"]]
    good = [f for f in FILES if f not in bad and f in owner.values()][:1]
    assert good, owner
    assert cli(["upgrade", str(src), str(tmp_path / "good"), *_patterns(good), "-q"]) == 0
    assert cli(["upgrade", str(src), "--dry-run", *_patterns(good), "-q"]) == 0
    capsys.readouterr()
    for extra in (["--dry-run"], [str(tmp_path / "bad")]):
        assert cli(["upgrade", str(src), *extra, *_patterns(bad)]) == 1
        assert "m1.b.weight" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_merge_refuses_parts_that_do_not_make_up_the_source(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _four_files(tmp_path / "src", _many_layers(60, 2))
    first, second = _split(_owner_by_hand(src))
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli(["upgrade", str(src), str(a), *_patterns(first), "-q"]) == 0
    assert cli(["upgrade", str(src), str(b), *_patterns(second), "-q"]) == 0
    other = _four_files(tmp_path / "other", _many_layers(61, 2))
    assert cli(["upgrade", str(other), str(tmp_path / "o"), *_patterns(second), "-q"]) == 0
    assert cli(["upgrade", str(src), str(tmp_path / "whole"), "-q"]) == 0
    b16 = ["--output-dtype", "m1.b=bfloat16"]
    assert cli(["upgrade", str(src), str(tmp_path / "b16"), *_patterns(second), *b16, "-q"]) == 0
    capsys.readouterr()
    dst = tmp_path / "dst"
    cases = [
        ([a, tmp_path / "b16"], "converted with different --output-dtype (none given and m1.b"),
        ([a], "no part holds"),
        ([a, a, b], f"{a} and {a} both hold"),
        ([a, tmp_path / "o"], f"{tmp_path / 'o'}: a part of another checkpoint"),
        ([a, tmp_path / "whole"], f"{tmp_path / 'whole' / dcp_format.PART_FILE}: missing"),
    ]
    for parts, words in cases:
        assert cli(["merge", str(src), str(dst), *map(str, parts)]) == 1
        err = capsys.readouterr().err
        assert words in err, (words, err)
        assert cli(["merge", str(src), str(dst), *map(str, parts), "--json"]) == 1
        assert words in json.loads(capsys.readouterr().out)["error"]
        assert not dst.exists()
    (b / "__0_0.distcp").unlink(missing_ok=True)  # a part's file lost
    for name in sorted(p.name for p in b.glob("*.distcp"))[:1]:
        with open(b / name, "r+b") as f:
            f.truncate(10)
    assert cli(["merge", str(src), str(dst), str(a), str(b)]) == 1
    assert str(b) in capsys.readouterr().err
    assert not dst.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "a", "b", "b16", "o", "other", "src", "whole",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (
            ["--only-shards", "__9_*"],
            ["--only-shards '__9_*': matches no .distcp file of", "e.g. "],
        ),
        (
            ["--only-shards", "__0_0*", "--to", "torch"],
            ["written as a DCP directory", "--to torch cannot be combined"],
        ),
        (["--only-shards", "__0_0*", "--in-place"], ["cannot be combined with --in-place"]),
    ],
)
def test_usage_errors(
    tmp_path: Path, args: list[str], words: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    src = _four_files(tmp_path / "src", _many_layers(70, 1))
    before = _digests(src)
    dst = [] if "--in-place" in args else [str(tmp_path / "out")]
    assert cli(["upgrade", str(src), *dst, *args]) == 2
    err = capsys.readouterr().err
    for w in words:
        assert w in err, (w, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    assert _digests(src) == before


def test_merge_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.save({"w": torch.zeros(2)}, tmp_path / "m.pt")
    (tmp_path / "p").mkdir()
    assert cli(["merge", str(tmp_path / "m.pt"), str(tmp_path / "out"), str(tmp_path / "p")]) == 2
    assert "a torch checkpoint is converted in one piece" in capsys.readouterr().err
    src = _four_files(tmp_path / "src", _many_layers(71, 1))
    assert cli(["merge", str(src), str(tmp_path / "out"), str(tmp_path / "m.pt")]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert cli(["merge", str(src), str(tmp_path / "out")]) == 2  # no PART
    assert not (tmp_path / "out").exists()


def _two_parts(tmp_path: Path, seed: int) -> tuple[Path, list[Path]]:
    src = _four_files(tmp_path / "src", _many_layers(seed, 2))
    parts = []
    for name, files in zip("ab", _split(_owner_by_hand(src)), strict=True):
        assert cli(["upgrade", str(src), str(tmp_path / name), *_patterns(files), "-q"]) == 0
        parts.append(tmp_path / name)
    assert cli(["upgrade", str(src), str(tmp_path / "whole"), "-q"]) == 0
    return src, parts


def test_merge_copies_where_hard_links_are_impossible(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, parts = _two_parts(tmp_path, 80)
    for item in parts[0].glob("*.distcp"):
        item.chmod(0o600)

    def no_links(a: object, b: object) -> None:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    assert cli(["merge", str(src), str(tmp_path / "merged"), *map(str, parts)]) == 0
    assert _digests(tmp_path / "merged") == _digests(tmp_path / "whole")
    for item in parts[0].glob("*.distcp"):
        copy = tmp_path / "merged" / item.name
        assert copy.stat().st_ino != item.stat().st_ino  # a copy, not a link
        assert copy.stat().st_mode & 0o777 == 0o600  # with the original's permission bits


KILLED_BEFORE_RENAME = r"""
import os, signal, sys
from compat.cli import main
real_rename = os.rename
def rename(a, b):
    if ".compat-tmp-" in str(a):  # the staged directory is about to become DST
        os.kill(os.getpid(), signal.SIGKILL)
    real_rename(a, b)
os.rename = rename
sys.exit(main(["merge", *sys.argv[1:]]))
"""


def test_a_merge_killed_before_its_rename_leaves_no_dst(tmp_path: Path) -> None:
    """SIGKILL at the last moment (every file staged): DST absent; the next merge removes
    the staged directory and completes."""
    src, parts = _two_parts(tmp_path, 81)
    dst = tmp_path / "merged"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TORCH_DEVICE_BACKEND_AUTOLOAD": "0"}
    args = [str(src), str(dst), *map(str, parts)]
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_BEFORE_RENAME, *args], env=env, cwd=ROOT, timeout=120
    )
    assert proc.returncode == -signal.SIGKILL
    assert not dst.exists()
    assert [p for p in tmp_path.iterdir() if "compat-tmp" in p.name]  # what the kill left
    assert cli(["merge", *args]) == 0
    assert not [p for p in tmp_path.iterdir() if "compat-tmp" in p.name]
    assert _digests(dst) == _digests(tmp_path / "whole")


def test_a_part_is_not_read_as_a_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It holds only some of the checkpoint: upgrade and load_legacy point to merge."""
    _src, parts = _two_parts(tmp_path, 82)
    capsys.readouterr()
    assert cli(["upgrade", str(parts[0]), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"{parts[0]}: one part of a conversion in parts" in err
    assert "python -m compat merge SRC DST PART..." in err
    with pytest.raises(compat.CheckpointError, match="one part of a conversion in parts"):
        compat.load_legacy(parts[0])
