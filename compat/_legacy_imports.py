"""Legacy imports of ``LinearA8W8Quant`` through torch_npu, unchanged.

Once installed (by the ``.pth`` start-up hook shipped with the package, or by
:func:`install_legacy_imports`), these names resolve to ``compat.LinearA8W8Quant``:

* ``torch_npu.contrib.module.LinearA8W8Quant``
* ``torch_npu.contrib.module.linear_a8w8_quant.LinearA8W8Quant``
* ``torch_npu.contrib.LinearA8W8Quant``

(a) where torch_npu still ships the class, its name is taken over, so ``isinstance``,
warnings and checkpoint upgrades apply to legacy code; (b) where a torch_npu release has
removed it, the three paths are supplied (the submodule as a small stand-in module);
(c) where torch_npu is absent, nothing happens: no ``torch_npu`` module is ever created
(other libraries probe for it to detect NPUs).

Mechanism: a ``sys.meta_path`` finder that acts only on ``torch_npu.contrib``,
``torch_npu.contrib.module`` and ``...module.linear_a8w8_quant``. After torch_npu has
executed such a module, the finder removes the class from the module's namespace and
installs a module ``__getattr__`` (PEP 562) that returns compat's adapter. Every access
from outside torch_npu and compat is a legacy use: it is recorded and warned about
(:mod:`compat._deprecation`), blamed on the accessing line. compat itself is imported
lazily, on the first such access after torch_npu has finished importing, never from
inside torch's or torch_npu's own import.

This module must stay cheap to import and must not import torch.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Sequence
from types import FrameType, ModuleType
from typing import Any

from compat import upstream
from compat._loaders import WrappingLoader, find_spec_elsewhere
from compat._stand_in import VAR as STAND_IN_VAR

DISABLE_VAR = "LINEAR_QUANT_COMPAT_DISABLE"
_TRUE_VALUES = frozenset({"1", "true", "yes", "on"})

NAME = upstream.LEGACY_CLASS
CONTRIB = upstream.CONTRIB
MODULE = upstream.MODULE
SUBMODULE = upstream.LEGACY_SUBMODULE
WATCHED = frozenset({CONTRIB, MODULE, SUBMODULE})

_FINDER_MARK = "linear_quant_compat_finder"
_STUB_MARK = "linear_quant_compat_stub"
_GETATTR_MARK = "_linear_quant_compat_getattr"

_lock = threading.RLock()
_local = threading.local()
_finder: LegacyImportFinder | None = None
_upstream_class: type | None = None


# The start-up hook. site-packages/linear_quant_compat_startup.pth holds exactly
# startup_pth_line(): it runs this source at interpreter start, in a namespace of its own.
# It imports nothing new (os and sys are loaded at start-up by then), never torch or
# compat, and only inserts a stub finder that stays idle until torch_npu.contrib is
# imported; then compat takes over (see take_over). Only when a -W option names
# compat.LinearA8W8QuantDeprecationWarning (which Python itself cannot resolve before
# site-packages is on sys.path) does it import compat._deprecation to apply it: also
# under LINEAR_QUANT_COMPAT_DISABLE, which turns off the legacy import hook only, not
# the warnings of compat.LinearA8W8Quant itself. Once compat._deprecation is imported the
# options are in force (applied by an earlier run of this hook: site processes .pth files
# twice in some virtual environments, or by Python itself when compat was importable
# while it read -W), so it is not applied again.
# When LINEAR_QUANT_COMPAT_TORCH_NPU is set (to anything), a second stub waits for
# ``import torch_npu``; only then does compat._stand_in check the value and, for
# ``cpu``, put the CPU stand-in's finder in its place (see compat.testing). Importing
# compat at start-up would keep pytest from rewriting it (a config-time warning).
# The source is inlined in the .pth file, not shipped as a module: pytest rewrites the
# modules of plugin distributions and warns about any already imported, which a
# start-up module always would be.
_STARTUP_TEMPLATE = """\
import os, sys
if os.environ.get("LINEAR_QUANT_COMPAT_DISABLE", "").strip().lower() not in (
    "1", "true", "yes", "on"
) and not any(
    getattr(f, "linear_quant_compat_stub", False)
    or getattr(f, "linear_quant_compat_finder", False)
    for f in sys.meta_path
):
    class LegacyImportStub:
        linear_quant_compat_stub = True
        watched = frozenset((
            "@CONTRIB@",
            "@MODULE@",
            "@SUBMODULE@",
        ))

        def find_spec(self, fullname, path=None, target=None):
            if fullname not in self.watched:
                return None
            try:
                from compat._legacy_imports import take_over
            except Exception as err:
                if self in sys.meta_path:
                    sys.meta_path.remove(self)
                sys.stderr.write(
                    "linear-quant-compat: legacy import hook disabled: cannot import "
                    "compat (%s: %s)\\n" % (type(err).__name__, err)
                )
                return None
            return take_over(self).find_spec(fullname, path, target)

        def invalidate_caches(self):
            pass

    sys.meta_path.insert(0, LegacyImportStub())
if os.environ.get("@STAND_IN_VAR@", "").strip() and not any(
    getattr(f, "linear_quant_compat_stand_in_stub", False)
    or getattr(f, "linear_quant_compat_stand_in_finder", False)
    for f in sys.meta_path
):
    class StandInStub:
        linear_quant_compat_stand_in_stub = True

        def find_spec(self, fullname, path=None, target=None):
            if fullname != "@PACKAGE@" and not fullname.startswith("@PACKAGE@."):
                return None
            try:
                from compat._stand_in import take_over
            except Exception as err:
                if self in sys.meta_path:
                    sys.meta_path.remove(self)
                sys.stderr.write(
                    "linear-quant-compat: @STAND_IN_VAR@ ignored: cannot import compat "
                    "(%s: %s)\\n" % (type(err).__name__, err)
                )
                return None
            finder = take_over(self)
            return None if finder is None else finder.find_spec(fullname, path, target)

        def invalidate_caches(self):
            pass

    sys.meta_path.insert(0, StandInStub())
if "compat._deprecation" not in sys.modules and any(
    "LinearA8W8QuantDeprecationWarning" in option for option in sys.warnoptions
):
    try:
        from compat._deprecation import apply_warnoptions
    except Exception as err:
        sys.stderr.write(
            "linear-quant-compat: -W options naming compat.LinearA8W8QuantDeprecationWarning "
            "ignored: cannot import compat (%s: %s)\\n" % (type(err).__name__, err)
        )
    else:
        apply_warnoptions()
"""
# The watched module names come from compat.upstream and the variable's name from
# compat._stand_in (both torch-free), filled in once here.
STARTUP_SOURCE = (
    _STARTUP_TEMPLATE.replace("@STAND_IN_VAR@", STAND_IN_VAR)
    .replace("@PACKAGE@", upstream.PACKAGE)
    .replace("@CONTRIB@", CONTRIB)
    .replace("@MODULE@", MODULE)
    .replace("@SUBMODULE@", SUBMODULE)
)


def startup_pth_line() -> str:
    """The single line of ``linear_quant_compat_startup.pth`` (site runs lines that
    start with ``import``)."""
    return f"import os; exec({STARTUP_SOURCE!r}, {{'__name__': 'linear_quant_compat_startup'}})"


def disabled() -> bool:
    """Whether ``LINEAR_QUANT_COMPAT_DISABLE`` is set to 1/true/yes/on (any case)."""
    return os.environ.get(DISABLE_VAR, "").strip().lower() in _TRUE_VALUES


def install_legacy_imports() -> bool:
    """Make legacy torch_npu imports of ``LinearA8W8Quant`` resolve to compat's adapter.

    What the ``.pth`` start-up hook does at interpreter start, for environments that
    skip ``.pth`` files (``python -S``, embedded interpreters, some freezers). Safe to
    call more than once and after torch_npu was imported (already imported modules are
    patched at once). Does nothing when torch_npu is absent.

    Returns True when the hook is active, False when ``LINEAR_QUANT_COMPAT_DISABLE`` is
    set (the opt-out wins over this call too).
    """
    if disabled():
        return False
    with _lock:
        finder = _install_finder(None)
        finder.patch_loaded()
    return True


def active() -> bool:
    """Whether the legacy import hook (start-up stub or finder) is in ``sys.meta_path``."""
    return any(
        getattr(f, _FINDER_MARK, False) or getattr(f, _STUB_MARK, False) for f in sys.meta_path
    )


def take_over(stub: object) -> LegacyImportFinder:
    """Called by the start-up stub on its first trigger: put the real finder in its place."""
    with _lock:
        return _install_finder(stub)


def _install_finder(stub: object | None) -> LegacyImportFinder:
    global _finder
    if _finder is None:
        _finder = LegacyImportFinder()
    finder = _finder
    hooks = sys.meta_path
    ours = [i for i, f in enumerate(hooks) if f is finder or getattr(f, _STUB_MARK, False)]
    if stub is not None and stub in hooks:
        ours.insert(0, hooks.index(stub))
    position = min(ours) if ours else 0
    hooks[:] = [f for f in hooks if f is not finder and not getattr(f, _STUB_MARK, False)]
    hooks.insert(min(position, len(hooks)), finder)
    return finder


class LegacyImportFinder:
    """``sys.meta_path`` finder acting on the three torch_npu modules in :data:`WATCHED`."""

    linear_quant_compat_finder = True

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> Any:
        if fullname not in WATCHED:
            return None
        busy: set[str] = getattr(_local, "busy", None) or set()
        if fullname in busy:  # a finder below us asked the whole meta_path again
            return None
        busy.add(fullname)
        _local.busy = busy
        try:
            spec = self._find_real(fullname, path, target)
        finally:
            busy.discard(fullname)
        if spec is None:
            if fullname == SUBMODULE and _real_module(MODULE):
                return _stand_in_spec()
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        spec.loader = _PatchingLoader(loader)
        return spec

    def _find_real(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None
    ) -> Any:
        return find_spec_elsewhere(
            fullname,
            path,
            target,
            lambda finder: finder is self or getattr(finder, _STUB_MARK, False),
        )

    def invalidate_caches(self) -> None:
        """Nothing cached here."""

    def patch_loaded(self) -> None:
        """Patch the watched modules that torch_npu has already imported."""
        for name in (SUBMODULE, MODULE, CONTRIB):
            module = sys.modules.get(name)
            if module is not None and not _initializing(module):
                _detach(module)


class _PatchingLoader(WrappingLoader):
    """Runs torch_npu's own loader, then patches the module it executed."""

    def exec_module(self, module: ModuleType) -> None:
        self.run(module)
        _detach(module)


class _StandInLoader:
    """Creates ``torch_npu.contrib.module.linear_a8w8_quant`` where torch_npu removed it."""

    def create_module(self, spec: Any) -> ModuleType | None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        module.__doc__ = (
            "Supplied by linear-quant-compat: this torch_npu no longer has "
            "LinearA8W8Quant; the name resolves to compat.LinearA8W8Quant."
        )
        module.__dict__["__all__"] = [NAME]
        _detach(module)


def _stand_in_spec() -> Any:
    from importlib.machinery import ModuleSpec

    loader: Any = _StandInLoader()
    return ModuleSpec(SUBMODULE, loader, origin="linear-quant-compat")


def serve_legacy_name(module: ModuleType) -> None:
    """Serve ``LinearA8W8Quant`` from ``module`` through the hook: every access from user
    code gives compat's adapter and is recorded and warned about (the CPU stand-in's
    modules use this too)."""
    _detach(module)


def _real_module(name: str) -> bool:
    module = sys.modules.get(name)
    return module is not None and getattr(module, "__file__", None) is not None


def _initializing(module: ModuleType | None) -> bool:
    spec = getattr(module, "__spec__", None)
    return bool(getattr(spec, "_initializing", False))


def _detach(module: ModuleType) -> None:
    """Take ``LinearA8W8Quant`` out of ``module``'s namespace; serve it from ``__getattr__``."""
    global _upstream_class
    namespace = module.__dict__
    value = namespace.get(NAME)
    if isinstance(value, type):
        if value.__module__ != upstream.COMPAT_LEGACY_MODULE and _upstream_class is None:
            _upstream_class = value
        del namespace[NAME]
    previous = namespace.get("__getattr__")
    if getattr(previous, _GETATTR_MARK, False):
        return
    module_name = module.__name__
    fallback: Callable[[str], Any] | None = previous if callable(previous) else None

    def __getattr__(name: str) -> Any:
        if name == NAME:
            __tracebackhide__ = True  # pytest: a warning raised as an error blames the user
            return _legacy_attribute(module_name, sys._getframe(1))
        if fallback is not None:
            return fallback(name)
        raise AttributeError(f"module {module_name!r} has no attribute {name!r}")

    setattr(__getattr__, _GETATTR_MARK, True)
    namespace["__getattr__"] = __getattr__


def _internal_prefixes() -> tuple[str, ...]:
    prefixes = [os.path.dirname(os.path.abspath(__file__)) + os.sep]
    torch_npu_file = getattr(sys.modules.get("torch_npu"), "__file__", None)
    if torch_npu_file:
        prefixes.append(os.path.dirname(torch_npu_file) + os.sep)
    return tuple(prefixes)


def _legacy_attribute(module_name: str, frame: FrameType | None) -> Any:
    """Value of ``<module_name>.LinearA8W8Quant`` for the code running in ``frame``."""
    __tracebackhide__ = True
    value = _resolve(module_name)
    filename = frame.f_code.co_filename if frame is not None else ""
    if "importlib" in filename and "_bootstrap" in filename:
        return value  # importlib's own probe of a ``from ... import``; the import follows
    if filename.startswith(_internal_prefixes()):
        return value  # torch_npu's re-exports, compat's own look-ups
    from compat import _deprecation

    path = f"{module_name}.{NAME}"
    if getattr(sys.modules.get(upstream.PACKAGE), upstream.STAND_IN_ATTRIBUTE, False):
        how = "linear-quant-compat's CPU stand-in for torch_npu serves compat.LinearA8W8Quant"
    elif _upstream_class is not None:
        how = "with linear-quant-compat installed it is compat.LinearA8W8Quant"
    else:
        how = (
            "this torch_npu no longer provides it; linear-quant-compat supplies "
            "compat.LinearA8W8Quant under the old name"
        )
    message = (
        f"{path} is deprecated ({how}). Import LinearQuant instead "
        f"({_deprecation.REPLACEMENT_IMPORT}) and construct it with keyword arguments; the "
        f"LinearA8W8Quant warning at construction names the exact call. "
        f"{_deprecation.removal_notice()}"
    )
    _deprecation.report("import", path, message, _deprecation.REPLACEMENT_IMPORT, start=frame)
    return value


def _unsafe_to_import_compat() -> bool:
    """True while torch, torch_npu or compat.nn is half-imported (importing compat.nn now
    would see half-built modules, or cache a wrong torch_npu probe)."""
    for name in ("torch", "torch_npu", "compat.nn", "compat.nn.linear_quant"):
        if _initializing(sys.modules.get(name)):
            return True
    return False


def _resolve(module_name: str) -> Any:
    adapter = getattr(sys.modules.get(upstream.COMPAT_LEGACY_MODULE), NAME, None)
    if adapter is not None:
        return adapter
    if _unsafe_to_import_compat():
        if _upstream_class is not None:
            return _upstream_class
        raise AttributeError(
            f"module {module_name!r} has no attribute {NAME!r} (yet: linear-quant-compat "
            f"supplies it once torch_npu has finished importing)"
        )
    from compat.nn.linear_a8w8_quant import LinearA8W8Quant

    return LinearA8W8Quant
