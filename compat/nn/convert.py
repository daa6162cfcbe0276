"""``compat.convert_model``: replace every LinearA8W8Quant of a model by LinearQuant."""

from __future__ import annotations

from torch import nn

from compat import upstream
from compat.formats.rules import NAMES
from compat.nn.linear_a8w8_quant import LinearA8W8Quant, replacement_kwargs
from compat.nn.linear_quant import LinearQuant


def is_legacy_module(module: nn.Module) -> bool:
    """Whether ``module`` is exactly compat's or torch_npu's ``LinearA8W8Quant``.

    Subclasses are not matched: replacing one by a plain LinearQuant would drop whatever
    the subclass adds.
    """
    cls = type(module)
    if cls.__name__ != upstream.LEGACY_CLASS:
        return False
    if cls.__module__ in (upstream.LEGACY_SUBMODULE, upstream.MODULE):
        return True
    return cls is LinearA8W8Quant


def replacement(module: nn.Module) -> nn.Module:
    """A LinearQuant sharing ``module``'s parameter objects (no tensor is copied)."""
    kwargs = replacement_kwargs(module)
    kwargs["device"] = "meta"  # placeholders only: the real tensors are shared below
    new = LinearQuant(**kwargs)
    for name in NAMES:
        value = getattr(module, name, None)
        if value is None:
            continue
        if not isinstance(value, nn.Parameter):
            raise TypeError(
                f"convert_model: {type(module).__name__}.{name} is a {type(value).__name__}, not "
                "an nn.Parameter; it cannot be shared with the replacement LinearQuant"
            )
        setattr(new, name, value)
    new.train(module.training)
    return new


def convert_model(model: nn.Module) -> int:
    """Replace, in place, every ``LinearA8W8Quant`` in ``model`` by ``LinearQuant``.

    Both compat's ``LinearA8W8Quant`` and torch_npu's own class (matched by its import
    path, so this works with upstream modules, unpickled ones included) are replaced by
    ``compat.LinearQuant`` built with the equivalent arguments
    (:func:`compat.nn.linear_a8w8_quant.replacement_kwargs`) and holding the very same
    ``Parameter`` objects: nothing is copied, optimizers and ties keep working, and
    dtypes are whatever the old module held. A module referenced from several places is
    replaced by one LinearQuant everywhere. Hooks registered on the old modules are not
    carried over; subclasses of LinearA8W8Quant are left alone.

    Upstream modules that were never loaded hold float32 placeholders: load the
    checkpoint after converting (LinearQuant's loader adopts the checkpoint's int8/int64
    dtypes) rather than before.

    Returns the number of modules replaced. Raises ValueError if ``model`` itself is a
    LinearA8W8Quant (it has no parent to be replaced in; build
    ``LinearQuant(**replacement_kwargs(model))`` and load its state_dict instead).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"convert_model: argument 'model' must be an nn.Module, got {type(model).__name__}"
        )
    if is_legacy_module(model):
        raise ValueError(
            "convert_model: the model itself is a LinearA8W8Quant, which cannot be replaced in "
            "place; build compat.LinearQuant(**replacement_kwargs(model)) and load "
            "model.state_dict() into it"
        )
    done: dict[int, tuple[nn.Module, nn.Module]] = {}  # id(old) -> (old, new)
    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):
            if child is None or not is_legacy_module(child):
                continue
            entry = done.get(id(child))
            if entry is None:
                entry = (child, replacement(child))
                done[id(child)] = entry
            parent._modules[name] = entry[1]
    return len(done)
