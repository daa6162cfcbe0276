"""``compat.load_legacy``: read a legacy checkpoint file and return it upgraded."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from compat.checkpoint import _torchfile
from compat.checkpoint._safetensors import SafetensorsFile
from compat.checkpoint.converter import UsageError, _open_shards, _read_index, resolve_source
from compat.checkpoint.upgrade import OutputDtypes, upgrade_state_dict
from compat.formats.errors import CheckpointError


def load_legacy(
    path: str | os.PathLike[str], *, trust_pickle: bool = False, output_dtypes: OutputDtypes = None
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

    ``output_dtypes`` as in :func:`compat.upgrade_state_dict`. Raises
    :class:`CheckpointError` for unreadable, corrupt, refused or unrecoverable input.
    """
    try:
        source = resolve_source(Path(path))
    except UsageError as err:
        raise CheckpointError(str(err)) from None
    if source.kind == "torch":
        loaded = _torchfile.load(source.path, trust_pickle=trust_pickle)
        if loaded.zip:
            _torchfile.check_zip_crc(source.path)
        plans = _torchfile.plan(loaded, output_dtypes)
        result: dict[str, Any] = _torchfile.apply(loaded.obj, plans)
        return result
    if source.kind == "safetensors":
        sf = SafetensorsFile(source.path)
        try:
            state = {name: sf.tensor(name) for name in sf.entries}
        finally:
            sf.close()
        return upgrade_state_dict(state, output_dtypes=output_dtypes)
    _index, weight_map = _read_index(source.path)
    shards = _open_shards(source.path, weight_map, trust_pickle)
    merged: dict[str, torch.Tensor] = {}
    try:
        for key, name in weight_map.items():
            shard = shards[name]
            merged[key] = shard.st.tensor(key) if shard.st is not None else shard.loaded.obj[key]  # type: ignore[union-attr]
    finally:
        for shard in shards.values():
            if shard.st is not None:
                shard.st.close()
    return upgrade_state_dict(merged, output_dtypes=output_dtypes)
