"""When compat's CPU stand-in for ``torch_npu`` is on, and why.

The stand-in is opt-in. Each way of switching it on is a *request*:

* ``LINEAR_QUANT_COMPAT_TORCH_NPU=cpu`` in the environment (read by the start-up hook,
  :func:`enable_from_environment`);
* pytest's ``--compat-torch-npu=cpu`` or the ini key ``compat_torch_npu = cpu``
  (:mod:`compat.pytest_plugin`);
* :func:`compat.testing.torch_npu_stand_in` (a context manager and decorator).

While at least one request is in force, a ``sys.meta_path`` finder answers ``import
torch_npu`` (and its submodules) with the modules built by :mod:`compat._stand_in.surface`,
unless a real torch_npu is installed: then the real one is imported, and it wins whenever
it imports. Only where it fails to import (a wheel without the CANN libraries) *and* the
environment variable asks for the stand-in explicitly does the stand-in take its place;
every other request leaves the failure as it is and says why on stderr.

With no request in force nothing is installed: ``import torch_npu`` behaves exactly as
without this library. This module must not import torch (the start-up hook imports it).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any, Final

from compat import upstream
from compat._loaders import WrappingLoader, find_spec_elsewhere

#: The environment variable, and the one value that switches the stand-in on.
VAR: Final = "LINEAR_QUANT_COMPAT_TORCH_NPU"
ON_VALUE: Final = "cpu"

#: How each request is named in status messages.
SOURCE_ENV: Final = f"{VAR}={ON_VALUE}"
SOURCE_CONTEXT: Final = "compat.testing.torch_npu_stand_in()"

PACKAGE: Final = upstream.PACKAGE

#: Every module the stand-in provides (name -> is a package). Importing any other
#: ``torch_npu.*`` module raises ModuleNotFoundError naming it.
MODULES: Final[dict[str, bool]] = {
    PACKAGE: True,
    f"{PACKAGE}.npu": False,
    upstream.CONTRIB: True,
    upstream.MODULE: True,
    upstream.LEGACY_SUBMODULE: False,
    upstream.REPLACEMENT_SUBMODULE: False,
    f"{PACKAGE}.testing": True,
    f"{PACKAGE}.testing.testcase": False,
}

#: What every "not provided" error says.
ONLY_SURFACE: Final = (
    "linear-quant-compat's CPU stand-in for torch_npu provides only the quantized-linear "
    "surface (npu_quant_matmul, npu_trans_quant_param, npu_format_cast, npu.is_available, "
    "npu.get_device_name, contrib.module.LinearA8W8Quant / LinearQuant, "
    "testing.testcase.TestCase / run_tests); run on an NPU host with torch_npu for the rest"
)

_lock = threading.RLock()
_local = threading.local()
_requests: list[str] = []
_finder: StandInFinder | None = None
_real_failure: str | None = None
_bad_env_reported = False


@dataclass(frozen=True)
class StandInStatus:
    """Whether the stand-in is active in this process, and why (or why not)."""

    active: bool
    reason: str
    requested_by: tuple[str, ...] = ()


def env_value() -> str | None:
    """The environment variable's value, stripped and lowercased (None when unset/empty)."""
    value = os.environ.get(VAR, "").strip().lower()
    return value or None


def env_requests_stand_in() -> bool:
    """Whether ``LINEAR_QUANT_COMPAT_TORCH_NPU=cpu`` is set (the explicit request)."""
    return env_value() == ON_VALUE


def bad_env_message() -> str | None:
    """An error message when the variable holds anything but ``cpu``, else None."""
    raw = os.environ.get(VAR, "")
    value = env_value()
    if value is None or value == ON_VALUE:
        return None
    return (
        f"linear-quant-compat: {VAR}={raw!r} is not a valid value (allowed: {ON_VALUE!r}, "
        f"or unset); the torch_npu stand-in stays off"
    )


def take_over(stub: object) -> StandInFinder | None:
    """Called by the start-up stub on ``import torch_npu``: act on the variable, put the
    stand-in's finder (if requested) where the stub was, and return it."""
    with _lock:
        position = sys.meta_path.index(stub) if stub in sys.meta_path else 0
        _remove_stubs()
        if not enable_from_environment():
            return None
        assert _finder is not None
        if _finder in sys.meta_path:
            sys.meta_path.remove(_finder)
        sys.meta_path.insert(min(position, len(sys.meta_path)), _finder)
        return _finder


def _remove_stubs() -> None:
    sys.meta_path[:] = [
        f for f in sys.meta_path if not getattr(f, "linear_quant_compat_stand_in_stub", False)
    ]


def _take_over_pending_stub() -> None:
    """The start-up stub has not seen ``import torch_npu`` yet: act on the variable now."""
    for finder in tuple(sys.meta_path):
        if getattr(finder, "linear_quant_compat_stand_in_stub", False):
            take_over(finder)
            return


def enable_from_environment() -> bool:
    """Request the stand-in when the variable says ``cpu`` (the start-up hook's part).

    A wrong value is reported on stderr, once, never raised.
    """
    global _bad_env_reported
    message = bad_env_message()
    if message is not None:
        if not _bad_env_reported:  # site runs .pth files twice in some virtual environments
            _bad_env_reported = True
            sys.stderr.write(message + "\n")
        return False
    if not env_requests_stand_in():
        return False
    with _lock:  # site runs .pth files twice in some virtual environments
        if SOURCE_ENV not in _requests:
            request(SOURCE_ENV)
    return True


def request(source: str) -> None:
    """Add a request; install the finder with the first one."""
    global _finder
    with _lock:
        _requests.append(source)
        if _finder is None:
            _finder = StandInFinder()
        if _finder not in sys.meta_path:
            sys.meta_path.insert(0, _finder)


def release(source: str) -> None:
    """Drop one request; with the last one, remove the stand-in from this process."""
    with _lock:
        if source in _requests:
            _requests.remove(source)
        if _requests:
            return
        if _finder is not None and _finder in sys.meta_path:
            sys.meta_path.remove(_finder)
        for name in [n for n, m in sys.modules.items() if is_stand_in(m)]:
            del sys.modules[name]
        surface = sys.modules.get("compat._stand_in.surface")
        undo = getattr(surface, "undo_patches", None)
        if callable(undo):
            undo()


def is_stand_in(module: object) -> bool:
    """Whether ``module`` is one of the stand-in's modules."""
    return getattr(module, upstream.STAND_IN_ATTRIBUTE, False) is True


def requested_by() -> tuple[str, ...]:
    """The requests in force, each named once, oldest first."""
    with _lock:
        return tuple(dict.fromkeys(_requests))


def status() -> StandInStatus:
    """Whether the stand-in is active here, and why."""
    _take_over_pending_stub()
    sources = requested_by()
    bad = bad_env_message()
    loaded = sys.modules.get(PACKAGE)
    if not sources:
        if bad is not None:
            return StandInStatus(False, bad.removeprefix("linear-quant-compat: "))
        return StandInStatus(
            False,
            f"not requested: set {SOURCE_ENV}, pass pytest --compat-torch-npu=cpu (or the "
            f"ini key compat_torch_npu = cpu), or use {SOURCE_CONTEXT}",
        )
    by = " and ".join(sources)
    if loaded is not None and not is_stand_in(loaded):
        return StandInStatus(
            False,
            f"requested by {by}, but a real torch_npu imported: the stand-in never replaces it",
            sources,
        )
    if loaded is not None:
        why = f"requested by {by}"
        if _real_failure is not None:
            why += f"; the installed torch_npu fails to import ({_real_failure})"
        return StandInStatus(True, why, sources)
    real = _real_spec(PACKAGE, None, None)
    if real is None:
        return StandInStatus(True, f"requested by {by}; no real torch_npu is installed", sources)
    where = real.origin or "?"
    if env_requests_stand_in():
        what = f"the stand-in takes over only if it fails to import ({SOURCE_ENV} is set)"
    else:
        what = f"the stand-in stays off even if it fails to import, unless {SOURCE_ENV} is set"
    return StandInStatus(
        False,
        f"requested by {by}, but a real torch_npu is installed ({where}): it is used when it "
        f"imports; {what}",
        sources,
    )


def _real_spec(fullname: str, path: Sequence[str] | None, target: ModuleType | None) -> Any:
    """The spec the other finders give ``fullname`` (a real torch_npu), or None."""
    busy: set[str] = getattr(_local, "busy", None) or set()
    if fullname in busy:
        return None
    busy.add(fullname)
    _local.busy = busy
    try:
        return find_spec_elsewhere(
            fullname, path, target, lambda finder: finder is _finder or _is_ours(finder)
        )
    finally:
        busy.discard(fullname)


def _is_ours(finder: object) -> bool:
    return bool(
        getattr(finder, "linear_quant_compat_stand_in_stub", False)
        or getattr(finder, "linear_quant_compat_stand_in_finder", False)
    )


def real_torch_npu_spec() -> ModuleSpec | None:
    """The spec of an installed real torch_npu (the stand-in's finders left out), or None."""
    spec: ModuleSpec | None = _real_spec(PACKAGE, None, None)
    return spec


def explain(real_state: str, real_reason: str | None = None) -> StandInStatus:
    """The status, given what a probe of the real torch_npu found (``"absent"``,
    ``"available"`` or ``"broken"``): what ``python -m compat doctor`` reports."""
    current = status()
    sources = current.requested_by
    if not sources:
        return current
    by = " and ".join(sources)
    if real_state == "absent":
        return StandInStatus(True, f"requested by {by}; no real torch_npu is installed", sources)
    if real_state == "available":
        return StandInStatus(
            False,
            f"requested by {by}, but a real torch_npu imports: the stand-in never replaces it",
            sources,
        )
    failure = f"the installed torch_npu fails to import ({real_reason})"
    if env_requests_stand_in():
        return StandInStatus(
            True, f"requested by {by}; {failure}, so the stand-in takes its place", sources
        )
    return StandInStatus(
        False,
        f"requested by {by}, but {failure}: the stand-in stays off (set {SOURCE_ENV})",
        sources,
    )


def _stand_in_spec(name: str) -> ModuleSpec:
    return ModuleSpec(
        name, _StandInLoader(), origin="linear-quant-compat CPU stand-in", is_package=MODULES[name]
    )


class StandInFinder:
    """``sys.meta_path`` finder for ``torch_npu`` and its submodules."""

    linear_quant_compat_stand_in_finder = True

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> Any:
        if fullname != PACKAGE and not fullname.startswith(PACKAGE + "."):
            return None
        if fullname == PACKAGE:
            real = _real_spec(fullname, path, target)
            if real is None:
                return _stand_in_spec(fullname)
            if real.loader is not None and hasattr(real.loader, "exec_module"):
                real.loader = _RealFirstLoader(real.loader)
            return real
        if not is_stand_in(sys.modules.get(PACKAGE)):
            return None  # a real torch_npu: its own modules
        if fullname in MODULES:
            return _stand_in_spec(fullname)
        raise ModuleNotFoundError(f"No module named {fullname!r}: {ONLY_SURFACE}", name=fullname)

    def invalidate_caches(self) -> None:
        """Nothing cached here."""


class _StandInLoader(importlib.abc.Loader):
    """Fills a stand-in module (:mod:`compat._stand_in.surface` knows what goes in)."""

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        # surface imports torch, so it is imported only here, once torch_npu is imported.
        setattr(module, upstream.STAND_IN_ATTRIBUTE, True)
        from compat._stand_in import surface

        surface.populate(module)


# compat's backend probe recognises the stand-in's spec by this mark without importing it
setattr(_StandInLoader, upstream.STAND_IN_ATTRIBUTE, True)


class _RealFirstLoader(WrappingLoader):
    """Runs a real torch_npu's loader; where it fails, maybe puts the stand-in in its place."""

    def exec_module(self, module: ModuleType) -> None:
        global _real_failure
        try:
            self.run(module)
        except Exception as err:
            _real_failure = f"{type(err).__name__}: {err}"
            for name in [n for n in sys.modules if n.startswith(PACKAGE + ".")]:
                del sys.modules[name]
            if not env_requests_stand_in():
                note = (
                    f"linear-quant-compat: the installed torch_npu fails to import "
                    f"({_real_failure}); the CPU stand-in stays off because a real torch_npu "
                    f"is installed. Set {SOURCE_ENV} to use the stand-in anyway."
                )
                sys.stderr.write(note + "\n")
                add_note = getattr(err, "add_note", None)
                if callable(add_note):
                    add_note(note)
                raise
            sys.stderr.write(
                f"linear-quant-compat: the installed torch_npu fails to import "
                f"({_real_failure}); using the CPU stand-in because {SOURCE_ENV} is set\n"
            )
            stand_in = importlib.util.module_from_spec(_stand_in_spec(PACKAGE))
            sys.modules[PACKAGE] = stand_in  # importlib returns what sys.modules holds
            _StandInLoader().exec_module(stand_in)
