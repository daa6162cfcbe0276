"""``python -m compat upgrade SRC DST --only-shards PATTERN``: one part of a sharded
safetensors checkpoint, planned from the whole index. Two disjoint parts, merged here by
copying their shards and combining their weight_maps, must give exactly the whole
conversion, loaded into compat's modules."""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import oracle
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

import compat
from compat.cli import main as cli

INDEX = "model.safetensors.index.json"
NAMES = [f"model-{i:05d}-of-00004.safetensors" for i in range(1, 5)]
PART_A = ["--only-shards", "model-0000[12]-of-00004.safetensors"]
PART_B = ["--only-shards", "model-00003*", "--only-shards", "*-00004-of-*"]
DTYPES = ["--output-dtype", "layers.2=bfloat16"]  # decode layers.2's int64 scale


def _int64_scale(n: int, g: torch.Generator) -> torch.Tensor:
    scale = (torch.rand(n, generator=g) + 0.5) * 1e-3
    return torch.from_numpy(oracle.encode(scale.numpy()).astype(np.int64))


def _sharded(path: Path, *, bad_weight: bool = False) -> Path:
    """Four safetensors shards; layers 0 and 2 have their weight and scale in different
    shards. layers.0: F4 float weight (shard 1) + int64 scale (shard 2), kept for int8;
    layers.1: int8 + int64 (current); layers.2: F4 weight (shard 2) + int64 scale
    (shard 3), decoded for bfloat16 output; shard 4 (head, norm) needs nothing.
    ``bad_weight``: layers.2.weight holds 0.5, which cannot be restored."""
    g = torch.Generator().manual_seed(5)
    w2 = torch.randint(-128, 128, (16, 32), generator=g).float()
    if bad_weight:
        w2[2, 7] = 0.5
    shards = [
        {
            "embed.weight": torch.randn(10, 32, generator=g),
            "layers.0.weight": torch.randint(-128, 128, (16, 32), generator=g).float(),
            "layers.0.bias": torch.arange(16, dtype=torch.int32),
        },
        {
            "layers.0.scale": _int64_scale(16, g),
            "layers.1.weight": torch.randint(-128, 128, (16, 32), generator=g, dtype=torch.int8),
            "layers.1.scale": _int64_scale(16, g),
            "layers.1.bias": torch.arange(16, dtype=torch.int32) - 8,
            "layers.2.weight": w2,
        },
        {
            "layers.2.scale": _int64_scale(16, g),
            "layers.2.bias": torch.randn(16, generator=g).to(torch.bfloat16),
        },
        {
            "head.weight": torch.randint(-128, 128, (8, 16), generator=g, dtype=torch.int8),
            "head.scale": torch.rand(8, generator=g) * 0.01,
            "head.bias": torch.arange(8, dtype=torch.int32),
            "norm.weight": torch.ones(32),
        },
    ]
    path.mkdir()
    weight_map: dict[str, str] = {}
    total = 0
    for name, state in zip(NAMES, shards, strict=True):
        save_file(state, str(path / name))
        weight_map.update(dict.fromkeys(state, name))
        total += sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / INDEX).write_text(json.dumps(index, indent=2))
    return path


def _digests(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


def _index(path: Path) -> dict[str, object]:
    result: dict[str, object] = json.loads((path / INDEX).read_text())
    return result


def _merge(parts: list[Path], dst: Path) -> None:
    """The commit step of docs/checkpoints.md, done by hand: every part's shards into
    DST, one index of the combined weight_maps, total_size the sum of the parts'."""
    dst.mkdir()
    weight_map: dict[str, str] = {}
    total = 0
    for part in parts:
        index = json.loads((part / INDEX).read_text())
        for shard in index["metadata"]["compat_part"]["shards"]:
            shutil.copy2(part / shard, dst / shard)
        weight_map.update(index["weight_map"])
        total += index["metadata"]["total_size"]
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (dst / INDEX).write_text(json.dumps(index, indent=2))


class Model(nn.Module):
    """compat's modules for the checkpoint of :func:`_sharded`."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 32)
        self.layers = nn.ModuleList(
            [
                compat.LinearQuant(32, 16),
                compat.LinearQuant(32, 16),
                compat.LinearQuant(32, 16, output_dtype=torch.bfloat16),
            ]
        )
        self.head = compat.LinearQuant(16, 8)
        self.norm = nn.LayerNorm(32, bias=False)


def _loaded(directory: Path) -> dict[str, torch.Tensor]:
    """The directory's shards, read as plain safetensors files, loaded into compat's
    modules (strict): the modules' state_dict."""
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(directory.glob("*.safetensors")):
        state.update(load_file(str(shard)))
    model = Model()
    model.load_state_dict(state, strict=True)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


# --------------------------------------------------------------------------- parts
@pytest.mark.parametrize("jobs", ["1", "2"])
def test_two_parts_merged_are_the_whole_conversion(tmp_path: Path, jobs: str) -> None:
    src = _sharded(tmp_path / "src")
    before = _digests(src)
    assert cli(["upgrade", str(src), str(tmp_path / "whole"), *DTYPES, "-q"]) == 0
    a, b = tmp_path / "part-a", tmp_path / "part-b"
    assert cli(["upgrade", str(src), str(a), *PART_A, *DTYPES, "--jobs", jobs, "-q"]) == 0
    assert cli(["upgrade", str(src / INDEX), str(b), *PART_B, *DTYPES, "--jobs", jobs]) == 0
    assert _digests(src) == before  # source untouched
    # each part holds exactly its shards, and says which of how many
    assert sorted(p.name for p in a.iterdir()) == sorted([*NAMES[:2], INDEX])
    assert sorted(p.name for p in b.iterdir()) == sorted([*NAMES[2:], INDEX])
    src_sha = hashlib.sha256((src / INDEX).read_bytes()).hexdigest()
    shards: list[str] = []
    for part in (a, b):
        index = _index(part)
        meta = index["metadata"]
        assert isinstance(meta, dict)
        info = meta["compat_part"]
        assert info["of"] == 4 and info["source_index"] == INDEX
        assert info["source_index_sha256"] == src_sha
        assert isinstance(index["weight_map"], dict)
        assert set(index["weight_map"].values()) == set(info["shards"])
        stored = sum(
            t.numel() * t.element_size()
            for name in info["shards"]
            for t in load_file(str(part / name)).values()
        )
        assert meta["total_size"] == stored
        shards += info["shards"]
    assert shards == NAMES  # disjoint and complete
    merged = tmp_path / "merged"
    _merge([a, b], merged)
    whole = _index(tmp_path / "whole")
    assert _index(merged) == whole  # same weight_map (and order) and total_size
    shard_digests = _digests(merged)
    del shard_digests[INDEX]  # written by _merge
    assert shard_digests == {n: _digests(tmp_path / "whole")[n] for n in NAMES}  # same bytes
    # the independent check: loaded into compat's modules, every tensor is identical
    state = _loaded(merged)
    _same(state, _loaded(tmp_path / "whole"))
    assert state["layers.0.weight"].dtype == torch.int8  # restored from shard 1
    assert state["layers.0.scale"].dtype == torch.int64  # kept (shard 2)
    assert state["layers.2.scale"].dtype == torch.float32  # decoded (shard 3)
    memory = compat.load_legacy(src, output_dtypes={"layers.2": torch.bfloat16})
    for key, value in memory.items():  # and the in-memory upgrade of the source agrees
        assert value.dtype == state[key].dtype and torch.equal(value, state[key]), key


def test_part_json_reports_the_selected_and_skipped_shards(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _sharded(tmp_path / "src")
    dst = tmp_path / "b"
    assert cli(["upgrade", str(src), str(dst), *PART_B, *DTYPES, "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["shards"] == {
        "patterns": ["model-00003*", "*-00004-of-*"],
        "selected": NAMES[2:],
        "skipped": NAMES[:2],
        "of": 4,
    }
    assert report["status"] == "converted" and report["verified"] is True
    assert sorted(Path(p).name for p in report["written"]) == sorted([*NAMES[2:], INDEX])
    # the report is about this part's tensors: layers.2's scale and bias, head
    groups = report["state_dicts"][0]["groups"]
    assert [g["module"] for g in groups] == ["layers.2", "head"]
    assert [k["key"] for k in groups[0]["keys"]] == ["layers.2.scale", "layers.2.bias"]
    assert report["quant_layers"] == 2
    assert report["state_dicts"][0]["other_keys"] == 1  # norm.weight
    # a whole conversion reports no part
    assert cli(["upgrade", str(src), str(tmp_path / "w"), *DTYPES, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["shards"] is None


def test_a_part_without_quant_layers_is_not_warned_about(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Shard 4 alone: no layer needs anything and the copy is byte-identical; the '0
    quantized linear layers' warning is about the whole checkpoint, which has four."""
    src = _sharded(tmp_path / "src")
    dst = tmp_path / "p4"
    assert cli(["upgrade", str(src), str(dst), "--only-shards", NAMES[3]]) == 0
    captured = capsys.readouterr()
    assert "0 quantized linear layers" not in captured.err
    assert "already current" in captured.out and "1 of 4 shards" in captured.out
    assert _digests(dst)[NAMES[3]] == _digests(src)[NAMES[3]]


def test_verbosity(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _sharded(tmp_path / "src")
    assert cli(["upgrade", str(src), str(tmp_path / "q"), *PART_A, "-q"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("converted: wrote")
    assert "2 of 4 shards" in lines[0]
    assert cli(["upgrade", str(src), str(tmp_path / "n"), *PART_A]) == 0
    out = capsys.readouterr().out
    assert (
        "shards: 2 of 4 selected by --only-shards 'model-0000[12]-of-00004.safetensors' "
        f"({NAMES[0]}, {NAMES[1]}); 2 skipped ({NAMES[2]}, {NAMES[3]})" in out
    )
    assert cli(["upgrade", str(src), str(tmp_path / "v"), *PART_A, "-v"]) == 0
    out = capsys.readouterr().out
    assert "layers.0 [F2+F4]" in out and "layers.1 [F2]" in out and "head" not in out
    assert out.count("-> torch.int8 (16, 32)  restored") == 2  # layers.0 and layers.2
    # of layers.2, only the weight is in shards 1-2 (its scale and bias are in shard 3)
    block = out[out.index("  layers.2 [F2+F4]") :].splitlines()
    assert block[1].startswith("    weight: ")
    assert block[2] == "    in other parts: scale, bias" and not block[3].startswith("    ")
    # the other part: layers.0's scale (shard 2) is here, its restored weight is not
    assert cli(["upgrade", str(src), "--dry-run", *PART_B, "--json"]) == 0
    groups = json.loads(capsys.readouterr().out)["state_dicts"][0]["groups"]
    layer2 = next(g for g in groups if g["module"] == "layers.2")
    assert layer2["elsewhere"] == ["weight"]
    assert cli(["upgrade", str(src), "--dry-run", "--only-shards", NAMES[1]]) == 0
    out = capsys.readouterr().out
    assert "need nothing here (their other tensors are other parts' to convert)" in out


def test_dry_run_of_a_part_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _sharded(tmp_path / "src")
    before = _digests(src)
    assert cli(["upgrade", str(src), *PART_A, "--dry-run", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "would-convert" and report["written"] == []
    assert report["shards"]["selected"] == NAMES[:2] and report["destination"] is None
    assert (
        cli(["upgrade", str(src), str(tmp_path / "dst"), "--only-shards", NAMES[3], "--dry-run"])
        == 0
    )
    assert "dry run: already current" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    assert _digests(src) == before


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_part_checks_the_weights_of_its_own_shards(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], jobs: str
) -> None:
    """layers.2.weight (shard 2) holds 0.5: part A fails as a whole, with the problem
    named, leaving no DST; part B (shards 3-4) does not read that weight."""
    src = _sharded(tmp_path / "src", bad_weight=True)
    before = _digests(src)
    for extra in (["--dry-run"], [str(tmp_path / "a"), "--jobs", jobs]):
        assert cli(["upgrade", str(src), *extra, *PART_A, *DTYPES]) == 1
        err = capsys.readouterr().err
        assert "'layers.2.weight'" in err and "0.5" in err and "[2, 7]" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    assert cli(["upgrade", str(src), "--dry-run", *PART_B, *DTYPES]) == 0
    assert cli(["upgrade", str(src), str(tmp_path / "b"), *PART_B, *DTYPES, "--jobs", jobs]) == 0
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == sorted([*NAMES[2:], INDEX])
    assert _digests(src) == before


def _merge_command(
    capsys: pytest.CaptureFixture[str], *args: Path, json_report: bool = False
) -> tuple[int, str]:
    """``python -m compat merge ARGS``, the commit step docs/checkpoints.md gives: its exit
    code and stderr (with ``json_report``: stdout)."""
    code = cli(["merge", *map(str, args), *(["--json"] if json_report else [])])
    out = capsys.readouterr()
    return code, out.out if json_report else out.err


def test_the_merge_command_gives_the_whole_conversion(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _sharded(tmp_path / "src")
    work = tmp_path / "work"
    work.mkdir()
    a, b = work / "part-a", work / "part-b"
    assert cli(["upgrade", str(src), str(a), *PART_A, *DTYPES, "-q"]) == 0
    assert cli(["upgrade", str(src), str(b), *PART_B, *DTYPES, "-q"]) == 0
    assert cli(["upgrade", str(src), str(tmp_path / "whole"), *DTYPES, "-q"]) == 0
    capsys.readouterr()
    dst = tmp_path / "dst"
    # refused, writing nothing: a part missing, parts overlapping, a part of another source
    code, err = _merge_command(capsys, src / INDEX, dst, a)
    assert code == 1 and "no part holds 2 shard(s)" in err and f"{NAMES[2]}, {NAMES[3]}" in err
    code, err = _merge_command(capsys, src, dst, a, a, b)
    assert code == 1 and f"{a} and {a} both hold {NAMES[0]!r}: the parts overlap" in err
    other = shutil.copytree(src, tmp_path / "other")
    (other / INDEX).write_text(json.dumps(_index(src)))  # the same checkpoint, other bytes
    assert cli(["upgrade", str(other), str(work / "b2"), *PART_B, *DTYPES, "-q"]) == 0
    capsys.readouterr()
    code, err = _merge_command(capsys, src, dst, a, work / "b2")
    assert code == 1 and f"{work / 'b2'}: a part of another checkpoint" in err
    code, err = _merge_command(capsys, src, dst, a, tmp_path / "whole")
    assert code == 1 and "not the index of a part" in err
    assert cli(["upgrade", str(src), str(work / "b3"), *PART_B, "-q"]) == 0  # no --output-dtype
    capsys.readouterr()
    code, err = _merge_command(capsys, src, dst, a, work / "b3")
    assert code == 1 and "were converted with different --output-dtype" in err
    assert "(layers.2=torch.bfloat16 and none given)" in err
    code, out = _merge_command(capsys, src, dst, a, json_report=True)
    assert code == 1 and json.loads(out)["exit_code"] == 1
    assert not dst.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "src", "whole", "work"]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert _merge_command(capsys, src, tmp_path / "full", a, b)[0] == 2  # DST not empty
    code, out = _merge_command(capsys, src, dst, a, b, json_report=True)
    assert code == 0 and json.loads(out)["status"] == "merged"
    assert _digests(dst) == _digests(tmp_path / "whole")  # every file, the index too
    for part in (a, a / INDEX):  # a part is not a checkpoint: merge it first
        assert cli(["upgrade", str(part), "--dry-run"]) == 2
        assert f"{a}: one part of a conversion in parts" in capsys.readouterr().err
    with pytest.raises(compat.CheckpointError, match="one part of a conversion in parts"):
        compat.load_legacy(a)
    assert (dst / NAMES[0]).stat().st_ino == (a / NAMES[0]).stat().st_ino  # hard links
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "dst", "full", "other", "src", "whole", "work",
    ]  # fmt: skip
    _same(_loaded(dst), _loaded(tmp_path / "whole"))


# --------------------------------------------------------------------------- usage errors
def _bin_sharded(path: Path) -> Path:
    path.mkdir()
    name = "pytorch_model-00001-of-00001.bin"
    state = {"fc.weight": torch.zeros(4, 4, dtype=torch.int8), "fc.scale": torch.ones(4)}
    torch.save(state, path / name)
    index = {"weight_map": dict.fromkeys(state, name)}
    (path / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    return path


@pytest.mark.parametrize(
    ("make", "args", "words"),
    [
        (
            "sharded",
            ["{dst}", "--only-shards", "model-0000[12]*", "--only-shards", "model-0009*"],
            [
                "--only-shards 'model-0009*': matches no shard",
                "a shell glob over the file names of its 4 shard(s)",
                f"{NAMES[0]}, {NAMES[1]}, {NAMES[2]} and 1 more",
            ],
        ),
        (
            "sharded",
            ["--dry-run", "--only-shards", "src/model-00001-of-00004.safetensors"],
            ["matches no shard", NAMES[0]],
        ),
        (
            "sharded",
            ["--in-place", "--only-shards", "model-00001*"],
            [
                "--only-shards 'model-00001*': cannot be combined with --in-place",
                "mixing converted and legacy shards",
                "allowed: a new DST directory",
            ],
        ),
        (
            "torch",
            ["{dst}", "--only-shards", "*"],
            [
                "--only-shards '*': the option applies to sharded safetensors checkpoints (",
                "and torch.distributed.checkpoint directories only",
                "was detected as a torch file",
            ],
        ),
        (
            "safetensors",
            ["{dst}", "--only-shards", "*"],
            ["directories only", "detected as a single safetensors file"],
        ),
        (
            "dcp",
            ["{dst}", "--only-shards", "*", "--to", "sharded"],
            [
                "--only-shards '*': a part of a DCP conversion is written as a DCP directory",
                "--to sharded cannot be combined with it",
            ],
        ),
        (
            "bin",
            ["{dst}", "--only-shards", "*"],
            [
                "sharded safetensors checkpoints only",
                "shard 'pytorch_model-00001-of-00001.bin' is not a safetensors file",
            ],
        ),
    ],
)
def test_usage_errors_exit_2_and_write_nothing(
    make: str,
    args: list[str],
    words: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    if make == "sharded":
        src = _sharded(tmp_path / "src")
    elif make == "bin":
        src = _bin_sharded(tmp_path / "src")
    elif make == "dcp":
        src = tmp_path / "src"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process"
            dcp_save({"fc.weight": torch.zeros(4, 4, dtype=torch.int8)}, checkpoint_id=str(src))
    else:
        (tmp_path / "src").mkdir()
        state = {"fc.weight": torch.zeros(4, 4, dtype=torch.int8), "fc.scale": torch.ones(4)}
        src = tmp_path / "src" / ("m.pt" if make == "torch" else "m.safetensors")
        if make == "torch":
            torch.save(state, src)
        else:
            save_file(state, str(src))
    before = _digests(tmp_path / "src")
    dst = tmp_path / ("o.pt" if make == "torch" else "out")  # a valid DST but for the option
    argv = [a.format(dst=dst) for a in args]
    assert cli(["upgrade", str(src), *argv]) == 2
    err = capsys.readouterr().err
    for w in words:
        assert w in err, (w, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    assert _digests(tmp_path / "src") == before
    assert cli(["upgrade", str(src), *argv, "--json"]) == 2  # and as JSON
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "error" and report["exit_code"] == 2
    assert words[0] in report["error"]
