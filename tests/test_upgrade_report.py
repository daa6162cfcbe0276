"""What `python -m compat upgrade` prints on a real-sized model (issue 14, "reads well"):
a summary by default, -v per layer, -q the verdict; no quant layer at all is said loudly;
output dtypes inferred from the dtype table; a missing pickled class is named."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import oracle
import pytest
import torch

import compat
from compat.checkpoint.progress import Progress
from compat.cli import main as cli

LAYERS = 24
K, N = 16, 8


def _torchair_model(tmp_path: Path) -> Path:
    """24 layers saved after torchair's use_internal_format_weight (int64 scale, F2) plus
    the float norm weights a real model has."""
    gen = torch.Generator().manual_seed(5)
    sd: dict[str, torch.Tensor] = {}
    for i in range(LAYERS):
        p = f"model.layers.{i}.mlp."
        scale = (torch.rand(N, generator=gen) + 0.5) * 1e-3
        sd[p + "weight"] = torch.randint(-128, 128, (N, K), dtype=torch.int8, generator=gen)
        sd[p + "scale"] = torch.from_numpy(oracle.encode(scale.numpy()).astype(np.int64))
        sd[p + "bias"] = torch.randint(-99, 99, (N,), dtype=torch.int32, generator=gen)
        sd[f"model.layers.{i}.norm.weight"] = torch.ones(K)
    path = tmp_path / "model.pt"
    torch.save(sd, path)
    return path


def test_default_is_a_summary_grouped_by_what_happens(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _torchair_model(tmp_path)
    assert cli(["upgrade", str(src), "--dry-run", "--output-dtype", "bfloat16"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{LAYERS} quantized linear layers, {LAYERS} to upgrade")
    assert f"  {LAYERS} layers [F2]: scale int64 -> float32 decoded" in out
    assert "   0 layers: need nothing" in out or " 0 layers: need nothing" in "\n".join(out)
    assert f"  output_dtype: {LAYERS} torch.bfloat16" in out
    assert out[-1] == "dry run: would convert (nothing written)"
    assert len(out) <= 6  # not 5 lines per layer
    assert not any("model.layers.3.mlp" in line for line in out)


def test_verbose_lists_every_layer_and_quiet_only_the_verdict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _torchair_model(tmp_path)
    assert cli(["upgrade", str(src), "--dry-run", "-v"]) == 0
    out = capsys.readouterr().out
    for i in range(LAYERS):
        assert f"model.layers.{i}.mlp [F2] output_dtype=unknown" in out
    assert out.count("    scale: torch.int64 (8,)  unchanged") == LAYERS
    assert cli(["upgrade", str(src), "--dry-run", "-q"]) == 0
    assert capsys.readouterr().out.splitlines() == ["dry run: already current (nothing written)"]
    assert cli(["upgrade", str(src), "--dry-run", "-q", "-v"]) == 2  # mutually exclusive
    assert "not allowed with" in capsys.readouterr().err


def test_no_quant_layer_at_all_is_reported_on_stderr_and_in_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "plain.pt"
    torch.save(
        torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4)).half().state_dict(), src
    )
    assert cli(["upgrade", str(src), str(tmp_path / "out.pt")]) == 0  # still exit 0
    captured = capsys.readouterr()
    assert "0 quantized linear layers found" in captured.out
    assert "0 quantized linear layers found" in captured.err
    assert cli(["upgrade", str(src), "--dry-run", "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["quant_layers"] == 0 and report["state_dicts"][0]["quant_layers"] == 0
    assert "0 quantized linear layers found" in captured.err


def _group(sd: dict[str, torch.Tensor]) -> compat.UpgradeReport:
    return compat.upgrade_report(sd)


def _layer(**extra: torch.Tensor) -> dict[str, torch.Tensor]:
    sd = {"fc.weight": torch.zeros(N, K, dtype=torch.int8), "fc.scale": torch.ones(N)}
    sd.update({f"fc.{k}": v for k, v in extra.items()})
    return sd


@pytest.mark.parametrize(
    ("extra", "shown", "source", "why"),
    [
        (
            {"offset": torch.zeros(N)},
            "torch.int8",
            "inferred",
            "an offset is legal only with output_dtype torch.int8",
        ),
        (
            {"bias": torch.zeros(N).bfloat16()},
            "torch.bfloat16",
            "inferred",
            "a torch.bfloat16 bias is legal only with output_dtype torch.bfloat16",
        ),
        (
            {"pertoken_scale": torch.ones(N), "bias": torch.zeros(N).half()},
            "torch.float16",
            "inferred",
            "a torch.float16 bias",
        ),
        ({"bias": torch.zeros(N, dtype=torch.int32)}, "unknown", "unknown", ""),
        ({}, "unknown", "unknown", ""),
    ],
    ids=["offset", "bf16-bias", "fp16-bias-pertoken", "int32-bias", "nothing"],
)
def test_output_dtype_is_inferred_where_the_dtype_table_implies_it(
    extra: dict[str, torch.Tensor], shown: str, source: str, why: str
) -> None:
    (g,) = _group(_layer(**extra)).groups
    assert (g.output_dtype, g.output_dtype_source) == (shown, source)
    assert why in g.output_dtype_reason and (why or not g.output_dtype_reason)
    if source == "inferred":
        assert f"output_dtype={shown} (inferred: " in str(_group(_layer(**extra)))


def test_a_bfloat16_scale_narrows_without_deciding_and_an_int64_scale_implies_nothing() -> None:
    (g,) = _group(_layer(scale=torch.ones(N).bfloat16())).groups
    assert g.output_dtype == "unknown"
    assert g.output_dtype_reason.startswith("one of torch.bfloat16, torch.int32")
    q = torch.from_numpy(oracle.encode(np.full(N, 1e-3, dtype=np.float32)).astype(np.int64))
    (g,) = _group(_layer(scale=q)).groups  # torchair encodes whatever the output dtype
    assert (g.output_dtype, g.output_dtype_reason) == ("unknown", "")
    (g,) = compat.upgrade_report(_layer(), output_dtypes=torch.float16).groups
    assert (g.output_dtype, g.output_dtype_source) == ("torch.float16", "given")


def test_progress_waits_a_second_and_no_progress_switches_it_off(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    quiet, shown = io.StringIO(), io.StringIO()
    late = Progress(100, enabled=True, stream=quiet, delay=60.0)
    late.phase("writing")
    late.advance(50)
    late.finish()
    assert quiet.getvalue() == ""  # a conversion shorter than the delay draws nothing
    now = Progress(100, enabled=True, stream=shown)
    now.advance(50)
    assert "50%" in shown.getvalue()
    src = _torchair_model(tmp_path)
    args = ["upgrade", str(src), str(tmp_path / "o.pt"), "--output-dtype", "bfloat16"]
    assert cli([*args, "--progress", "always", "--no-progress"]) == 0
    assert "[" not in capsys.readouterr().err


SAVE_FROM_SCRIPT = """
import torch
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(2, 3)
torch.manual_seed(0)
torch.save(Net(), {path!r})
"""


def test_a_pickle_of_a_script_class_names_it_and_can_be_mapped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "net.pt"
    subprocess.run([sys.executable, "-c", SAVE_FROM_SCRIPT.format(path=str(src))], check=True)
    assert cli(["upgrade", str(src), "--dry-run", "--trust-pickle"]) == 1
    err = capsys.readouterr().err
    assert "the pickle needs class __main__.Net" in err
    assert "--class __main__.Net=mymodels:Net" in err and "PYTHONPATH" in err
    assert "classes={'__main__.Net': Net}" in err
    (tmp_path / "mymodels.py").write_text(
        textwrap.dedent(SAVE_FROM_SCRIPT.split("torch.manual_seed")[0])
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    args = ["upgrade", str(src), str(tmp_path / "o.pt"), "--trust-pickle"]
    assert cli([*args, "--class", "__main__.Net=mymodels:Net"]) == 0
    saved = torch.load(tmp_path / "o.pt", weights_only=True)
    torch.manual_seed(0)
    want = torch.nn.Linear(2, 3).state_dict()  # the same seed gives the same parameters
    assert set(saved) == {"fc.weight", "fc.bias"}
    assert all(torch.equal(saved[f"fc.{k}"], want[k]) for k in want)
    assert cli([*args, "--class", "__main__.Net=nowhere:Net"]) == 1
    assert "cannot import 'Net' from 'nowhere'" in capsys.readouterr().err
    assert cli([*args, "--class", "oops"]) == 2

    import mymodels  # type: ignore[import-not-found]

    state = compat.load_legacy(src, trust_pickle=True, classes={"__main__.Net": mymodels.Net})
    assert all(torch.equal(state[f"fc.{k}"], want[k]) for k in want)
