"""Golden legacy checkpoints (tests/data, made by tests/data/make_golden.py): every one
loads into compat's modules, by every route, and reproduces the stored outputs of an
independent numpy oracle bit for bit; the unrecoverable ones are refused."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import compat
from compat.cli import main as cli

DATA = Path(__file__).resolve().parent / "data"
MANIFEST: dict[str, Any] = json.loads((DATA / "golden.json").read_text())
LAYERS: dict[str, dict[str, Any]] = MANIFEST["layers"]
FILES: dict[str, dict[str, Any]] = MANIFEST["files"]
IO: dict[str, torch.Tensor] = torch.load(DATA / "golden_io.pt", weights_only=True)
DTYPES = {
    "int8": torch.int8,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int32": torch.int32,
}

OK_FILES = sorted(n for n, f in FILES.items() if f["expect"] == "ok")
REFUSED = sorted(n for n, f in FILES.items() if f["expect"] == "error")


# --------------------------------------------------------------------------- helpers
def build_model(
    layers: dict[str, dict[str, Any]], cls: type[nn.Module] = compat.LinearQuant
) -> nn.Module:
    """A container holding one module per prefix (``a.b.c`` -> root.a.b.c)."""
    root = nn.Module()
    for prefix, cfg in layers.items():
        parent = root
        *path, leaf = prefix.split(".")
        for part in path:
            if not hasattr(parent, part):
                parent.add_module(part, nn.Module())
            parent = getattr(parent, part)
        module_cls = (
            cls
            if cfg.get("cls") == "LinearA8W8Quant" or cls is compat.LinearQuant
            else compat.LinearQuant
        )
        parent.add_module(
            leaf,
            module_cls(
                cfg["in_features"],
                cfg["out_features"],
                bias=cfg["bias"],
                offset=cfg["offset"],
                pertoken_scale=cfg["pertoken_scale"],
                output_dtype=DTYPES[cfg["output_dtype"]],
            ),
        )
    return root


def layers_of(name: str) -> dict[str, dict[str, Any]]:
    return {p: LAYERS[p] for p in FILES[name]["layers"]}


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({1: torch.int8, 2: torch.int16, 4: torch.int32}[t.element_size()])


def check_outputs(
    model: nn.Module, name: str, layers: list[str], key_of: dict[str, str] | None = None
) -> None:
    """Run every layer on its stored input; the output must equal the stored one exactly."""
    for prefix in layers:
        module = model.get_submodule(prefix)
        tag = (key_of or {}).get(prefix, prefix)
        x, want = IO[f"{name}|{tag}|x"], IO[f"{name}|{tag}|y"]
        pertoken = IO.get(f"{name}|{tag}|pertoken")
        if pertoken is not None:
            module.pertoken_scale.data = pertoken  # per-call data: the (m,) scale of this batch
        got = module(x)
        assert got.dtype == want.dtype, (name, prefix, got.dtype, want.dtype)
        assert torch.equal(bits(got), bits(want)), (name, prefix, got, want)


def read_any(path: Path) -> dict[str, torch.Tensor]:
    """The file's state_dict as plain tools read it (no upgrade)."""
    if path.is_dir():
        index = json.loads(next(path.glob("*.index.json")).read_text())
        from safetensors.torch import load_file

        merged: dict[str, torch.Tensor] = {}
        for shard in dict.fromkeys(index["weight_map"].values()):
            merged.update(load_file(str(path / shard)))
        return merged
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state: dict[str, torch.Tensor] = torch.load(path, map_location="cpu", weights_only=True)
    return state


def _make_golden() -> Any:
    spec = importlib.util.spec_from_file_location("make_golden", DATA / "make_golden.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


digest = _make_golden()._digest  # sha256 over a file, or a directory's files


# --------------------------------------------------------------------------- integrity
def test_golden_files_are_the_committed_ones() -> None:
    for name, entry in FILES.items():
        assert digest(DATA / name) == entry["sha256"], (
            f"{name} changed: rerun tests/data/make_golden.py"
        )
    assert len(OK_FILES) >= 10 and len(REFUSED) == 2


@pytest.mark.slow
def test_make_golden_reproduces_the_committed_files() -> None:
    done = subprocess.run(
        [sys.executable, str(DATA / "make_golden.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "golden files match" in done.stdout


def test_plain_torch_load_state_dict_corrupts_golden_f2() -> None:
    """The problem being solved (docs/ops.md §3.4): a module with upstream's float32 parameter
    silently turns the int64 quant param into a float of the integer."""
    sd = read_any(DATA / "f2_torchair.pt")
    upstream_like = nn.Module()
    upstream_like.scale = nn.Parameter(torch.empty(16), requires_grad=False)
    upstream_like.load_state_dict({"scale": sd["blocks.0.attn.q.scale"]})
    assert upstream_like.scale.dtype == torch.float32
    assert float(upstream_like.scale[0]) >= 2.0**46  # garbage: the integer, not the scale


# --------------------------------------------------------------------------- loading routes
@pytest.mark.parametrize("assign", [False, True])
@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize("name", OK_FILES)
def test_load_state_dict_reproduces_outputs(name: str, strict: bool, assign: bool) -> None:
    model = build_model(layers_of(name))
    result = model.load_state_dict(read_any(DATA / name), strict=strict, assign=assign)
    assert not result.missing_keys and not result.unexpected_keys
    check_outputs(model, name, FILES[name]["layers"])


@pytest.mark.parametrize("name", OK_FILES)
def test_load_legacy_reproduces_outputs_and_is_current(name: str) -> None:
    state = compat.load_legacy(DATA / name)
    assert all(
        v.dtype in (torch.int8, torch.int32) for k, v in state.items() if k.endswith(".weight")
    )
    assert not compat.upgrade_report(state).changed  # idempotent: already current
    model = build_model(layers_of(name))
    model.load_state_dict(state)
    check_outputs(model, name, FILES[name]["layers"])


@pytest.mark.parametrize("name", OK_FILES)
def test_cli_upgrade_reproduces_outputs(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = DATA / name
    dst = tmp_path / (name if not src.is_dir() else "out")
    before = digest(src)
    assert cli(["upgrade", str(src), str(dst), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["verified"] is True and report["status"] in ("converted", "current")
    assert digest(src) == before  # the source is never modified
    state = read_any(dst)
    for key, value in state.items():
        if key.endswith(".weight"):
            assert value.dtype == torch.int8, key
    model = build_model(layers_of(name))
    model.load_state_dict(state, strict=True)
    check_outputs(model, name, FILES[name]["layers"])
    # converting the converted file changes nothing
    assert cli(["upgrade", str(dst), "--dry-run", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "up-to-date"


def test_linear_a8w8_quant_adapter_loads_golden_f2_and_f4() -> None:
    for name in ("f2_torchair.pt", "f4_float_weight.pt"):
        with pytest.warns(compat.LinearA8W8QuantDeprecationWarning):
            model = build_model(layers_of(name), cls=compat.LinearA8W8Quant)
        assert isinstance(model.get_submodule("blocks.0.attn.q"), compat.LinearA8W8Quant)
        model.load_state_dict(read_any(DATA / name))
        check_outputs(model, name, FILES[name]["layers"])


# --------------------------------------------------------------------------- what each format becomes
def test_f2_int64_kept_where_legal_and_decoded_where_a_float_scale_is_needed() -> None:
    model = build_model(layers_of("f2_torchair.pt"))
    model.load_state_dict(read_any(DATA / "f2_torchair.pt"))
    assert model.get_submodule("blocks.0.attn.q").scale.dtype == torch.int64  # int8 output
    assert model.get_submodule("blocks.0.attn.o").scale.dtype == torch.int64  # float16 output
    for prefix in ("blocks.1.mlp", "blocks.1.gate"):  # bfloat16 output / pertoken
        scale = model.get_submodule(prefix).scale
        assert scale.dtype == torch.float32
        # exact decoding: the float32 bits are the param's bits 13-31 (docs/ops.md §1.5)
        raw = read_any(DATA / "f2_torchair.pt")[f"{prefix}.scale"]
        assert torch.equal(scale.view(torch.int32).to(torch.int64) & 0xFFFFFFFF, raw & 0xFFFFE000)
    assert set(FILES["f2_torchair.pt"]["decoded"]) == {"blocks.1.mlp.scale", "blocks.1.gate.scale"}


def test_f2_sharded_report_names_the_decoded_keys_with_output_dtypes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    src = DATA / "f2_sharded"
    # without output dtypes only the pertoken module's scale needs a float (key present)
    assert cli(["upgrade", str(src), "--dry-run", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["state_dicts"][0]
    decoded = {k["key"] for g in report["groups"] for k in g["keys"] if k["action"] == "decoded"}
    assert decoded == {"blocks.1.gate.scale"}
    assert (
        cli(["upgrade", str(src), "--dry-run", "--json", "--output-dtype", "blocks.1.mlp=bfloat16"])
        == 0
    )
    report = json.loads(capsys.readouterr().out)["state_dicts"][0]
    decoded = {k["key"] for g in report["groups"] for k in g["keys"] if k["action"] == "decoded"}
    assert decoded == set(FILES["f2_sharded"]["decoded"])


def test_f3_per_tensor_shapes_are_adopted() -> None:
    model = build_model(layers_of("f3_per_tensor.pt"))
    model.load_state_dict(read_any(DATA / "f3_per_tensor.pt"))
    q = model.get_submodule("blocks.0.attn.q")
    assert q.scale.shape == (1,) and q.offset.shape == (1,)
    report = compat.upgrade_report(read_any(DATA / "f3_torchair.pt"))
    formats = {g.module: g.formats for g in report.groups}
    assert formats["blocks.0.attn.o"] == ("F2", "F3") and formats["blocks.0.attn.q"] == ("F2",)


@pytest.mark.parametrize("name", OK_FILES)
def test_reported_formats_are_the_manifests(name: str) -> None:
    """Each group is labelled with the legacy formats found in it, as golden.json and
    docs/checkpoints.md name them: F1 (plain, current) only when nothing else was found,
    never in combination (an F3-only group is "F3", not "F1+F3")."""
    want = FILES[name]["format"].split("+")
    report = compat.upgrade_report(read_any(DATA / name))
    labels = {g.module: list(g.formats) for g in report.groups}
    assert set(labels) >= set(FILES[name]["layers"])
    for module, formats in labels.items():
        assert formats == ["F1"] or ("F1" not in formats and set(formats) <= set(want)), (
            module,
            formats,
        )
    found = sorted({f for formats in labels.values() for f in formats if formats != ["F1"]})
    assert found == (want if want != ["F1"] else [])


def test_f3_and_f4_labels_in_the_converter_report(capsys: pytest.CaptureFixture[str]) -> None:
    for name, label in (("f3_per_tensor.pt", "F3"), ("f4_float_weight.pt", "F4")):
        assert cli(["upgrade", str(DATA / name), "--dry-run", "--json"]) == 0
        groups = json.loads(capsys.readouterr().out)["state_dicts"][0]["groups"]
        assert [g["formats"] for g in groups] == [[label]] * len(FILES[name]["layers"])
        assert cli(["upgrade", str(DATA / name), "--dry-run", "-v"]) == 0
        out = capsys.readouterr().out
        assert f"blocks.0.attn.q [{label}]" in out and "F1" not in out
        assert cli(["upgrade", str(DATA / name), "--dry-run"]) == 0
        out = capsys.readouterr().out
        layers = len(FILES[name]["layers"])
        assert f"{layers} layers [{label}]:" in out and "F1" not in out


def test_f4_float_weights_are_restored_to_int8() -> None:
    sd = read_any(DATA / "f4_float_weight.pt")
    assert sd["blocks.0.attn.q.weight"].dtype == torch.float32
    report = compat.upgrade_report(sd)
    restored = {k.key for k in report.changes}
    assert restored == {f"{p}.weight" for p in LAYERS}
    assert all(k.action == "restored" and k.after.dtype == torch.int8 for k in report.changes)
    upgraded = compat.upgrade_state_dict(sd)
    assert sd["blocks.0.attn.q.weight"].dtype == torch.float32  # input untouched
    assert torch.equal(upgraded["blocks.0.attn.q.weight"].float(), sd["blocks.0.attn.q.weight"])


# --------------------------------------------------------------------------- refused files
@pytest.mark.parametrize("name", REFUSED)
def test_unrecoverable_files_are_refused_by_every_route(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    words = FILES[name]["error_contains"]
    model = build_model(layers_of(name))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(compat.CheckpointError) as err:
        model.load_state_dict(read_any(DATA / name))
    assert all(w in str(err.value) for w in words), str(err.value)
    q = model.get_submodule("blocks.0.attn.q")
    assert q.scale.dtype == torch.float32  # untouched (compared as bits: torch.empty may hold NaN)
    assert torch.equal(bits(q.scale.data), bits(before["blocks.0.attn.q.scale"]))
    with pytest.raises(compat.CheckpointError) as err:
        compat.load_legacy(DATA / name)
    assert all(w in str(err.value) for w in words)
    assert cli(["upgrade", str(DATA / name), str(tmp_path / "out.pt")]) == 1
    stderr = capsys.readouterr().err
    assert all(w in stderr for w in words), stderr
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary left


# --------------------------------------------------------------------------- whole-module pickle
def test_module_pickle_refused_without_trust(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entry = FILES["module_pickle.pt"]
    with pytest.raises(compat.CheckpointError) as err:
        compat.load_legacy(DATA / "module_pickle.pt")
    assert all(w in str(err.value) for w in entry["error_contains"])
    assert "trust_pickle=True" in str(err.value)
    assert cli(["upgrade", str(DATA / "module_pickle.pt"), str(tmp_path / "out.pt")]) == 1
    assert "--trust-pickle" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def _pickle_model() -> tuple[nn.Module, dict[str, str]]:
    modules = FILES["module_pickle.pt"]["modules"]
    model = build_model(modules)
    return model, {short: short for short in modules}


def test_module_pickle_with_trust_redirects_to_compat(tmp_path: Path) -> None:
    state = compat.load_legacy(DATA / "module_pickle.pt", trust_pickle=True)
    assert state["q.weight"].dtype == torch.int8  # natural dtypes (set through .data upstream)
    assert state["head.weight"].dtype == torch.int8  # F4 inside the pickle: restored
    model, names = _pickle_model()
    model.load_state_dict(state)
    check_outputs(model, "module_pickle.pt", list(names), names)
    # the CLI saves a plain state_dict, loadable with weights_only=True
    out = tmp_path / "state.pt"
    assert cli(["upgrade", str(DATA / "module_pickle.pt"), str(out), "--trust-pickle"]) == 0
    saved = torch.load(out, weights_only=True)
    assert set(saved) == set(state) and all(torch.equal(saved[k], state[k]) for k in state)
