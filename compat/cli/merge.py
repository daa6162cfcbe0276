"""``python -m compat merge SRC DST PART...``: put the parts of a conversion split
across hosts (``upgrade --only-shards``) together."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = (
    "put the parts of an upgrade --only-shards conversion (one per host) together into DST, "
    "all or nothing"
)

_EPILOG = """\
SRC is the checkpoint the parts were converted from (a sharded safetensors checkpoint or
a torch.distributed.checkpoint directory); each PART is a directory one
`python -m compat upgrade SRC PART --only-shards PATTERN` wrote. The parts must come
from this SRC and together hold each shard (DCP: each item) exactly once. Their files
are hard-linked into a new directory beside DST (copied where links are impossible),
the whole index (DCP: .metadata) is written there, and it is renamed to DST: DST
appears complete or not at all. DST is then what one `upgrade SRC DST` writes. See
docs/checkpoints.md (Converting a 1 TB checkpoint on many machines).

exit codes: 0 merged, 1 the parts do not make up SRC (message on stderr, or in the
--json report), 2 usage error.
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _EPILOG
    parser.add_argument("src", metavar="SRC", help="the checkpoint the parts come from")
    parser.add_argument("dst", metavar="DST", help="the new directory to write")
    parser.add_argument("parts", metavar="PART", nargs="+", help="the parts' directories")
    parser.add_argument(
        "--json", action="store_true", help="print a machine-readable report on stdout"
    )


def run(args: argparse.Namespace) -> int:
    from compat._torchload import ensure_torch

    ensure_torch()
    from compat.checkpoint.converter import UsageError, merge
    from compat.formats.errors import CheckpointError

    try:
        written = merge(Path(args.src), Path(args.dst), [Path(p) for p in args.parts])
    except (UsageError, CheckpointError) as err:
        code = 2 if isinstance(err, UsageError) else 1
        if args.json:
            report = {"source": args.src, "status": "error", "exit_code": code, "error": str(err)}
            print(json.dumps(report, indent=2))
        else:
            print(f"merge: error: {err}", file=sys.stderr)
        return code
    if args.json:
        report = {
            "source": args.src,
            "destination": args.dst,
            "status": "merged",
            "parts": len(args.parts),
            "written": [str(p) for p in written],
        }
        print(json.dumps(report, indent=2))
    else:
        print(f"merged {len(args.parts)} part(s) into {args.dst} ({len(written)} files)")
    return 0
