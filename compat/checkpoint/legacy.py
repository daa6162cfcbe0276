"""``compat.load_legacy``: read a legacy checkpoint file and return it upgraded."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from compat.checkpoint import files
from compat.checkpoint.request import UsageError
from compat.checkpoint.unpickler import Classes
from compat.checkpoint.upgrade import OutputDtypes
from compat.formats.errors import CheckpointError


def load_legacy(
    path: str | os.PathLike[str],
    *,
    trust_pickle: bool = False,
    output_dtypes: OutputDtypes = None,
    classes: Classes | None = None,
) -> dict[str, Any]:
    """Load a legacy checkpoint and return its upgraded state_dict.

    ``path``: a torch file (zip or legacy serialization), a ``.safetensors`` file, or a
    Hugging Face sharded checkpoint (its directory or ``*.index.json``; the shards are
    merged into one state_dict). Read on the CPU with ``weights_only=True`` (and
    ``mmap=True`` for zip files: unchanged tensors stay file-backed); the CRC of every
    record of a zip file is checked. A whole-module pickle (``torch.save(model)``) is
    refused unless ``trust_pickle=True``: unpickling can run arbitrary code. With trust,
    torch_npu's classes are redirected to compat's and the model's state_dict is
    returned. A torch file holding a dict of state_dicts (e.g. ``{"state_dict": ...,
    "epoch": 3}``) comes back as that dict with each state_dict upgraded.

    ``classes`` (with ``trust_pickle``): pickled class names mapped to the classes to
    build instead, e.g. ``{"__main__.Net": Net}`` for a model saved from a script, or to
    where to import them (``"mypkg.models:Net"``).

    ``output_dtypes`` as in :func:`compat.upgrade_state_dict`. Raises
    :class:`CheckpointError` for unreadable, corrupt, refused or unrecoverable input.
    """
    try:
        source = files.detect(Path(path))
    except UsageError as err:
        raise CheckpointError(str(err)) from None
    fmt = files.by_name(source.kind)
    result: dict[str, Any] = fmt.load(
        source.path, trust_pickle=trust_pickle, output_dtypes=output_dtypes, classes=classes
    )
    return result
