"""``python -m compat upgrade SRC [DST]``: convert legacy checkpoints offline (CPU only)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HELP = (
    "upgrade legacy LinearA8W8Quant/LinearQuant checkpoints (torch, safetensors, sharded) to the "
    "current format, atomically and verified"
)

_EPILOG = """\
SRC is a torch file (.pt/.pth/.bin, zip or legacy serialization), a .safetensors file,
or a Hugging Face sharded checkpoint (its directory or *.index.json; DST is then a
directory). The source is never modified unless --in-place (which keeps SRC.bak and
never overwrites an existing backup; on failure every file is left as it was, and a
replaced file keeps its permission bits). Output is written to a temporary file,
fsynced, verified by reloading and then moved into place. See docs/checkpoints.md.

--only-shards converts one part of a sharded safetensors checkpoint (e.g. one host's
share of a very large one): planned from the whole index, it writes to DST only the
matching shards, verified, and an index of their entries whose metadata.compat_part
lists the part's shards and how many the whole has. For a DCP directory it selects
.distcp files; DST gets the items they own, a .metadata of those and compat_part.json.
`python -m compat merge SRC DST PART...` puts the parts together (docs/checkpoints.md:
Converting a 1 TB checkpoint on many machines).

exit codes: 0 converted or already current (dry run: convertible), 1 conversion error
(message on stderr, or in the --json report), 2 usage error.
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _EPILOG
    parser.add_argument("src", metavar="SRC", help="the legacy checkpoint")
    parser.add_argument(
        "dst", metavar="DST", nargs="?", help="where to write the upgraded checkpoint"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="report what would change; write nothing"
    )
    parser.add_argument(
        "--in-place", action="store_true", help="replace SRC, keeping SRC.bak (never overwritten)"
    )
    parser.add_argument(
        "--json", action="store_true", help="print a machine-readable report on stdout"
    )
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow whole-module pickles (torch.save(model)); unpickling can run arbitrary "
        "code, so use it only for files whose origin you trust",
    )
    parser.add_argument(
        "--to",
        choices=("dcp", "torch", "safetensors", "sharded"),
        default=None,
        help="output format for a torch.distributed.checkpoint source (default: dcp); "
        "other sources keep their format",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        metavar="N",
        help="worker processes for the shards of a sharded checkpoint (default: the usable "
        "cores, capped by memory and by one per GiB to rewrite); the commit stays all or "
        "nothing",
    )
    parser.add_argument(
        "--only-shards",
        action="append",
        default=[],
        metavar="PATTERN",
        help="sharded safetensors checkpoints: convert only the shards whose file name (as the "
        "index's weight_map lists it, e.g. model-0000[1-4]-of-00016.safetensors) matches the "
        "shell glob PATTERN (case-sensitive; repeatable: the union). The plan is made from the "
        "whole index; DST gets the selected shards and an index of their entries only. For a "
        "DCP directory PATTERN selects .distcp files, and DST gets the items they own. Not "
        "with --in-place; put the parts together with python -m compat merge",
    )
    parser.add_argument(
        "--class",
        dest="classes",
        action="append",
        default=[],
        metavar="PICKLED=MODULE:CLASS",
        help="with --trust-pickle: build class PICKLED (as the pickle names it, e.g. "
        "__main__.Net for a model saved from a script) from MODULE:CLASS, importable from "
        "PYTHONPATH (repeatable)",
    )
    parser.add_argument(
        "--output-dtype",
        action="append",
        default=[],
        metavar="[MODULE=]DTYPE",
        help="output dtype of the quant linears (int8, float16, bfloat16, int32), which a "
        "state_dict does not record: one DTYPE for all, or MODULE=DTYPE per module (repeatable). "
        "Needed only to decode torchair int64 scales for bfloat16/int32 output, or to declare an "
        "ambiguous float-weight module a quant linear",
    )
    parser.add_argument(
        "--progress",
        choices=("auto", "always", "never"),
        default="auto",
        help="progress bar on stderr (auto: on a terminal, once a conversion runs over a second)",
    )
    parser.add_argument(
        "--no-progress",
        dest="progress",
        action="store_const",
        const="never",
        help="no progress bar (same as --progress never)",
    )
    loud = parser.add_mutually_exclusive_group()
    loud.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="list every layer and key with what happens to it and why",
    )
    loud.add_argument(
        "-q", "--quiet", action="store_true", help="print only the verdict (and errors)"
    )


def _output_dtypes(values: list[str]) -> Any:
    # imported here, not at the top: `upgrade --help` must not import torch
    import torch

    from compat.ops.output_dtype import parse_output_dtype

    default = None
    per: dict[str, torch.dtype] = {}
    for value in values:
        module, _, name = value.rpartition("=")
        # "none" is int8, as a module's output_dtype=None
        text = "int8" if name.strip().lower() == "none" else name.strip()
        try:
            dtype = parse_output_dtype(text, func="upgrade", strings=True)
        except ValueError as err:
            allowed = str(err).partition("; allowed: ")[2]
            raise ValueError(
                f"--output-dtype {value!r}: unknown dtype {name!r}; allowed: {allowed}"
            ) from None
        assert dtype is not None  # a string never parses to None
        if "=" in value:
            per[module] = dtype
        elif default is not None:
            raise ValueError("--output-dtype DTYPE (for all modules) given twice")
        else:
            default = dtype
    if default is not None and per:
        raise ValueError(
            "give either one --output-dtype DTYPE for all modules or MODULE=DTYPE entries, not both"
        )
    return per or default


def _fail(args: argparse.Namespace, code: int, message: str, problems: tuple[str, ...] = ()) -> int:
    if args.json:
        print(
            json.dumps(
                {
                    "source": args.src,
                    "status": "error",
                    "exit_code": code,
                    "error": message,
                    "problems": list(problems),
                },
                indent=2,
            )
        )
    else:
        print(f"upgrade: error: {message}", file=sys.stderr)
    return code


def run(args: argparse.Namespace) -> int:
    from compat._torchload import ensure_torch

    ensure_torch()
    from compat.checkpoint.converter import Request, UsageError, convert
    from compat.formats.errors import CheckpointError

    try:
        output_dtypes = _output_dtypes(args.output_dtype)
    except ValueError as err:
        return _fail(args, 2, str(err))
    if args.jobs is not None and args.jobs < 1:
        return _fail(args, 2, f"--jobs {args.jobs}: must be at least 1")
    classes: dict[str, object] = {}
    for entry in args.classes:
        pickled, sep, target = entry.partition("=")
        if not sep or not pickled or not target:
            return _fail(args, 2, f"--class {entry!r}: expected PICKLED=MODULE:CLASS")
        classes[pickled] = target
    request = Request(
        src=Path(args.src),
        dst=None if args.dst is None else Path(args.dst),
        dry_run=args.dry_run,
        in_place=args.in_place,
        trust_pickle=args.trust_pickle,
        classes=classes,
        to=args.to,
        jobs=args.jobs,
        output_dtypes=output_dtypes,
        progress=args.progress,
        only_shards=tuple(args.only_shards),
    )
    try:
        result = convert(request)
    except UsageError as err:
        return _fail(args, 2, str(err))
    except CheckpointError as err:
        return _fail(args, 1, str(err), err.problems)
    except ValueError as err:  # e.g. output_dtypes naming a module that is not there
        return _fail(args, 2, str(err))
    if result.checkpoint_layers == 0:
        print(
            f"upgrade: warning: {args.src}: 0 quantized linear layers found (no "
            "LinearA8W8Quant/LinearQuant entries); nothing to upgrade; is this the right file?",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result.render(2 if args.verbose else 0 if args.quiet else 1))
    return 0
