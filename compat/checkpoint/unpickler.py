"""Pickled Python objects in torch files: refused by default, redirected when trusted.

``torch.load(weights_only=True)`` refuses any global outside tensors and plain
containers, which is what keeps a malicious ``__reduce__`` from running. A
whole-module pickle (``torch.save(model)``) of torch_npu's classes is refused the same
way; with explicit trust it is loaded through an unpickler that maps
``torch_npu.contrib.module.*`` to compat's classes, so torch_npu need not be installed.
:class:`RestrictedUnpickler` reads pickles that are not torch files (DCP's ``.metadata``)
calling only the globals a subclass allows and never changing them.
"""

from __future__ import annotations

import enum
import importlib
import io
import pickle
import re
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from compat import upstream

UPSTREAM_PACKAGE = upstream.MODULE

# upstream class name -> (compat module, class name)
REDIRECTS: dict[str, tuple[str, str]] = {
    upstream.LEGACY_CLASS: (upstream.COMPAT_LEGACY_MODULE, upstream.LEGACY_CLASS),
    upstream.REPLACEMENT_CLASS: (upstream.COMPAT_REPLACEMENT_MODULE, upstream.REPLACEMENT_CLASS),
}

# modules whose globals in a checkpoint mean code execution, not a model class
_DANGEROUS = (
    "os",
    "posix",
    "nt",
    "subprocess",
    "builtins",
    "__builtin__",
    "sys",
    "shutil",
    "socket",
    "runpy",
)

#: classes that a weights-only load also accepts: building them runs no code of the file's
#: choosing. ``io.BytesIO``: training states saved as bytes buffers (torchtitan's
#: ``TrainState``, ``torch.distributed.checkpoint`` entries), which ``torch.save`` pickles.
SAFE_CLASSES: tuple[type, ...] = (io.BytesIO,)

_GLOBAL = re.compile(r"GLOBAL ([A-Za-z_][\w.]*)")


#: ``"module.Class"`` as the pickle names it -> the class to use instead, or where to
#: import it from (``"package.module:Class"`` or ``"package.module.Class"``)
Classes = Mapping[str, object]


class RedirectingUnpickler(pickle.Unpickler):
    """Unpickler that resolves ``torch_npu.contrib.module.*`` classes to compat's, and
    the classes of :attr:`classes` to what they map to."""

    classes: ClassVar[Classes] = {}

    def find_class(self, module: str, name: str) -> Any:
        wanted = f"{module}.{name}"
        if wanted in self.classes:
            return _resolve(wanted, self.classes[wanted])
        if module == UPSTREAM_PACKAGE or module.startswith(UPSTREAM_PACKAGE + "."):
            target = REDIRECTS.get(name)
            if target is None:
                raise pickle.UnpicklingError(
                    f"the pickle needs {module}.{name}, which compat has no replacement for "
                    f"(compat provides {', '.join(sorted(REDIRECTS))}); load the file where "
                    "torch_npu is installed and save model.state_dict() instead"
                )
            return getattr(importlib.import_module(target[0]), target[1])
        try:
            return super().find_class(module, name)
        except (AttributeError, ImportError) as err:
            raise pickle.UnpicklingError(missing_class_message(wanted, err)) from None


def missing_class_message(wanted: str, err: BaseException) -> str:
    """Which class a trusted pickle needs that is not importable here, and what to do."""
    module, _, name = wanted.rpartition(".")
    where = (
        "it was defined in the script that saved the file (__main__), which is not the "
        "program running now"
        if module == "__main__"
        else f"importing it failed ({type(err).__name__}: {err})"
    )
    return (
        f"the pickle needs class {wanted}, which cannot be found: {where}. Make it importable: "
        f"put the class definition in a module on PYTHONPATH (e.g. mymodels.py) and map it "
        f"with --class {wanted}=mymodels:{name} (API: compat.load_legacy(path, "
        f"trust_pickle=True, classes={{{wanted!r}: {name}}})), or load the file in the script "
        "that defines it and save model.state_dict() instead"
    )


def _resolve(wanted: str, target: object) -> Any:
    if not isinstance(target, str):
        return target
    module, sep, attr = target.partition(":")
    if not sep:
        module, _, attr = target.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (AttributeError, ImportError, ValueError) as err:
        raise pickle.UnpicklingError(
            f"--class {wanted}={target}: cannot import {attr!r} from {module!r} "
            f"({type(err).__name__}: {err}); is its module on PYTHONPATH?"
        ) from None


def redirecting_pickle_module(classes: Classes | None = None) -> types.ModuleType:
    """A ``pickle``-like module for ``torch.load(pickle_module=...)``; ``classes`` maps
    pickled class names to replacements (see :data:`Classes`)."""
    module = types.ModuleType("compat_redirecting_pickle")
    for name in (
        "load",
        "loads",
        "dump",
        "dumps",
        "Pickler",
        "UnpicklingError",
        "PicklingError",
        "HIGHEST_PROTOCOL",
        "DEFAULT_PROTOCOL",
    ):
        setattr(module, name, getattr(pickle, name))
    unpickler = type(
        "RedirectingUnpickler", (RedirectingUnpickler,), {"classes": dict(classes or {})}
    )
    module.Unpickler = unpickler  # type: ignore[attr-defined]
    return module


#: Python's own unpickler and its opcode handlers (the stdlib types them loosely)
_PyUnpickler: Any = pickle._Unpickler
_HANDLERS: dict[int, Any] = dict(_PyUnpickler.dispatch)


class RestrictedUnpickler(_PyUnpickler):  # type: ignore[misc]  # untyped stdlib base
    """A pickle reader that runs nothing a file chooses: a subclass's :meth:`find_class`
    names the globals allowed, and only those may be called (REDUCE, NEWOBJ, OBJ), and
    BUILD sets state only on the objects they made, never on a class, function or module
    itself (the C unpickler would ``setattr`` on an allowed class, changing it for the
    whole process). Python's own unpickler (``pickle._Unpickler``) is used because its
    opcode handlers can be replaced; the C one cannot be."""

    dispatch: ClassVar[dict[int, Any]] = dict(_HANDLERS)

    def __init__(self, file: Any) -> None:
        super().__init__(file)
        self._callables: set[int] = set()  # ids of what find_class returned

    def find_class(self, module: str, name: str) -> Any:
        found = self.allowed_global(module, name)
        self._callables.add(id(found))
        return found

    def allowed_global(self, module: str, name: str) -> Any:
        """The global ``module.name`` if allowed (found with :meth:`lookup`); raise
        otherwise. Subclasses decide."""
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed")

    def lookup(self, module: str, name: str) -> Any:
        """Import ``module.name`` (for :meth:`allowed_global`, once it has allowed it)."""
        return _PyUnpickler.find_class(self, module, name)

    def _check_callable(self, value: Any, opcode: str) -> None:
        if id(value) not in self._callables:
            raise pickle.UnpicklingError(
                f"{opcode} on {type(value).__name__}, which is not an allowed global"
            )

    def _reduce(self) -> None:
        self._check_callable(self.stack[-2], "REDUCE")
        _HANDLERS[pickle.REDUCE[0]](self)

    def _newobj(self) -> None:
        self._check_callable(self.stack[-2], "NEWOBJ")
        _HANDLERS[pickle.NEWOBJ[0]](self)

    def _newobj_ex(self) -> None:
        self._check_callable(self.stack[-3], "NEWOBJ_EX")
        _HANDLERS[pickle.NEWOBJ_EX[0]](self)

    def _obj(self) -> None:
        if self.stack:  # OBJ: the class is the first item after the mark
            self._check_callable(self.stack[0], "OBJ")
        _HANDLERS[pickle.OBJ[0]](self)

    def _build(self) -> None:
        state, target = self.stack[-1], self.stack[-2]
        shared = id(target) in self._callables or isinstance(
            target,
            type | types.FunctionType | types.BuiltinFunctionType | types.ModuleType | enum.Enum,
        )
        if shared:  # an enum member is one object for the whole process
            raise pickle.UnpicklingError(
                f"BUILD on {getattr(target, '__qualname__', type(target).__name__)}: a pickle "
                "may set the state of the objects it makes, not of a class, function or "
                "enum member"
            )
        parts = state if isinstance(state, tuple) and len(state) == 2 else (state,)
        for part in parts:
            if isinstance(part, dict) and any(
                not isinstance(k, str) or k.startswith("__") for k in part
            ):
                raise pickle.UnpicklingError(
                    f"BUILD on {type(target).__name__} sets a special attribute "
                    f"({', '.join(map(repr, part))})"
                )
        _HANDLERS[pickle.BUILD[0]](self)

    dispatch[pickle.REDUCE[0]] = _reduce
    dispatch[pickle.NEWOBJ[0]] = _newobj
    dispatch[pickle.NEWOBJ_EX[0]] = _newobj_ex
    dispatch[pickle.OBJ[0]] = _obj
    dispatch[pickle.BUILD[0]] = _build


def weights_only_refusal(
    err: BaseException, path: Path, *, entry: str | None = None, whole_file: bool = True
) -> str | None:
    """Why a weights-only load of ``path`` (``entry``: one entry of it) that failed with
    ``err`` is refused: the pickle needs classes beyond weights, or is in pickle protocol
    4 or 5 (an opcode torch's weights-only reader does not read). None: it failed for
    another reason (a corrupt file). ``whole_file``: the pickle is the file at ``path``,
    so every global it needs can be listed, not only the one ``err`` names."""
    if "Unsupported operand" in str(err):
        return _protocol_refusal(path, entry)
    names = globals_in(path if whole_file else None, err)
    return refusal_message(path, names, entry) if names else None


def _protocol_refusal(path: Path, entry: str | None = None) -> str:
    """Why a file (``entry``: one entry of it) in pickle protocol 4 or 5 is refused."""
    what = "it is" if entry is None else f"its entry {entry!r} is"
    return (
        f"{path}: refusing to unpickle it: {what} written with pickle protocol 4 or 5, which "
        "torch's weights-only reader cannot read, and a full unpickling can run arbitrary "
        "code. If you trust where the file comes from, pass --trust-pickle (API: "
        "trust_pickle=True); or re-save it with torch.save's default protocol."
    )


def globals_in(path: Path | None, err: BaseException) -> list[str]:
    """The globals a weights-only load refused (all of them for zip files at ``path``;
    None: only those named by ``err``, for a pickle inside a larger file)."""
    found: list[str] = []
    try:
        import torch.serialization

        if path is not None:
            found = list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:
        found = []
    for match in _GLOBAL.findall(str(err)):
        if match not in found:
            found.append(match)
    allowed = {f"{c.__module__}.{c.__qualname__}" for c in SAFE_CLASSES}
    return [name for name in found if name not in allowed]


def refusal_message(path: Path, names: list[str], entry: str | None = None) -> str:
    """Why a file (``entry``: one entry of it) with pickled objects is refused, and what
    to do."""
    listed = ", ".join(names)
    what = "the file holds" if entry is None else f"its entry {entry!r} holds"
    text = (
        f"{path}: refusing to unpickle it: {what} pickled Python objects, not only tensors "
        f"(it needs {listed}), and unpickling them can run arbitrary code, so it is loaded with "
        "weights_only=True only."
    )
    if any(
        n.startswith(UPSTREAM_PACKAGE + ".") or n.startswith(UPSTREAM_PACKAGE + " ") for n in names
    ):
        text += (
            " This is a whole-module pickle (torch.save(model)) of torch_npu's modules. If you "
            "trust where the file comes from, pass --trust-pickle (API: trust_pickle=True): "
            "torch_npu's classes are then redirected to compat's, torch_npu is not needed, and "
            "the result is saved as a state_dict."
        )
    else:
        text += (
            " If you trust where the file comes from, pass --trust-pickle (API: "
            "trust_pickle=True); the result is saved as a state_dict."
        )
    dangerous = [n for n in names if n.split(".", 1)[0] in _DANGEROUS]
    if dangerous:
        text += (
            f" Warning: {', '.join(dangerous)} {'is' if len(dangerous) == 1 else 'are'} not a "
            "model class but a way to run commands: do not trust this file."
        )
    return text
