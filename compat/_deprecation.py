"""The one place that warns about, and records, deprecated ``LinearA8W8Quant`` use.

Two kinds of use are reported, each attributed to the user's line:

* ``construct``: a ``LinearA8W8Quant`` (or a subclass) was built
  (:mod:`compat.nn.linear_a8w8_quant`);
* ``import``: ``LinearA8W8Quant`` was reached through a legacy ``torch_npu`` path
  (:mod:`compat._legacy_imports`).

Attribution: the warning and the record point at the first frame that is neither in
``compat`` nor in ``torch`` (importlib's own frames are skipped as the warnings machinery
skips them). Python 3.12+ gets it from ``warnings.warn(skip_file_prefixes=...)``; older
versions get a stacklevel computed by walking the stack the way ``warnings.warn`` does.

Under the ``default`` action each kind of use warns once per site, even when successive
constructions there produce different messages (a loop over layer sizes): the site and
the kind, not the message text, are the unit. A line that both reaches the legacy name
and constructs (``torch_npu.contrib.module.LinearA8W8Quant(512, 128, True, True)``) so
warns twice: once for the import, once for the construction. Every other action
(``error``, ``always``, ``ignore``, ``once``, ``module``) behaves as documented by
:mod:`warnings`.

Listeners (the pytest plugin) see every event, whatever the warning filters say.

When a filter turns the warning into an error, the frames of this module, of
``LinearA8W8Quant.__init__`` and of the legacy attribute hook set ``__tracebackhide__``,
so that pytest reports the user's line as the crash location.

This module must not import torch: ``compat.LinearA8W8QuantDeprecationWarning`` is
resolved by pytest's ``filterwarnings`` before any test runs.
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

from compat._version import __version__

#: First release of linear-quant-compat without ``LinearA8W8Quant`` and the legacy
#: import hook. ``tests/test_removal_gate.py`` fails once ``__version__`` reaches it.
REMOVAL_VERSION = "1.0.0"

#: The migration guide, named in every warning.
DOCS_URL = "https://github.com/linear-quant-compat/linear-quant-compat/blob/main/docs/migration.md"

#: The import that replaces every legacy path.
REPLACEMENT_IMPORT = "from compat import LinearQuant"


class LinearA8W8QuantDeprecationWarning(FutureWarning):
    """``LinearA8W8Quant`` is deprecated: use ``LinearQuant``.

    A ``FutureWarning`` (shown by default, like torch_npu's own warning), with its own
    class so that CI can turn exactly this deprecation into an error:
    ``-W error::compat.LinearA8W8QuantDeprecationWarning`` or, in pytest,
    ``filterwarnings = error::compat.LinearA8W8QuantDeprecationWarning``.
    """

    __module__ = "compat"  # shown (and pickled) under its public name


@dataclass(frozen=True)
class Event:
    """One deprecated use, as handed to listeners."""

    kind: str  # "construct" or "import"
    symbol: str  # what was used, e.g. "LinearA8W8Quant" or "torch_npu.contrib.LinearA8W8Quant"
    filename: str
    lineno: int
    replacement: str  # the call or import to write instead
    message: str


Listener = Callable[[Event], None]

_listeners: list[Listener] = []
_lock = threading.Lock()


def add_listener(listener: Listener) -> None:
    """Call ``listener(event)`` for every deprecated use from now on."""
    with _lock:
        _listeners.append(listener)


def remove_listener(listener: Listener) -> None:
    """Stop calling ``listener``; no error if it was not registered."""
    with _lock:
        if listener in _listeners:
            _listeners.remove(listener)


def apply_warnoptions() -> None:
    """Apply ``-W``/``PYTHONWARNINGS`` options that name this module's category.

    Python processes ``-W`` before site-packages is on ``sys.path``, so it prints
    "Invalid -W option ignored: invalid module name: 'compat'" and drops
    ``-W error::compat.LinearA8W8QuantDeprecationWarning``. The start-up hook calls this
    function afterwards: it re-applies the options from the first one naming the category
    on, in their order, so that later options still take precedence as documented.
    """
    options = list(sys.warnoptions)
    first = next(
        (
            i
            for i, option in enumerate(options)
            if LinearA8W8QuantDeprecationWarning.__name__ in option
        ),
        None,
    )
    setoption = getattr(warnings, "_setoption", None)
    option_error = getattr(warnings, "_OptionError", Exception)
    if first is None or setoption is None:
        return
    for option in options[first:]:
        try:
            setoption(option)
        except option_error:
            pass  # Python has already reported it


# --- attribution -------------------------------------------------------------------------

_COMPAT_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_skip_prefixes: tuple[str, ...] | None = None


def skip_prefixes() -> tuple[str, ...]:
    """Path prefixes of the packages whose frames are never blamed: compat and torch."""
    global _skip_prefixes
    if _skip_prefixes is None:
        prefixes = [_COMPAT_DIR]
        torch = sys.modules.get("torch")
        torch_file = getattr(torch, "__file__", None)
        if torch_file:
            prefixes.append(os.path.dirname(torch_file) + os.sep)
        else:  # torch not imported yet: do not cache an incomplete answer
            return tuple(prefixes)
        _skip_prefixes = tuple(prefixes)
    return _skip_prefixes


def _is_importlib_frame(filename: str) -> bool:
    # The rule of CPython's warnings machinery for "internal" frames.
    return "importlib" in filename and "_bootstrap" in filename


def user_frame(prefixes: tuple[str, ...], start: FrameType | None) -> FrameType | None:
    """The first frame at or above ``start`` that is outside ``prefixes`` and importlib."""
    frame = start
    while frame is not None:
        filename = frame.f_code.co_filename
        if not filename.startswith(prefixes) and not _is_importlib_frame(filename):
            return frame
        frame = frame.f_back
    return None


# --- the "default" action, per site ---------------------------------------------------------

_epoch_filters: object = None
_epoch_snapshot: tuple[object, ...] = ()
_warned_sites: set[tuple[str, int, str]] = set()


def _action(category: type[Warning], text: str, module: str, lineno: int) -> str:
    """The action ``warnings`` will take, found the way ``warnings.warn_explicit`` does."""
    for item in warnings.filters:
        action, msg, cat, mod, ln = item
        if (
            _matches(msg, text)
            and issubclass(category, cat)
            and _matches(mod, module)
            and (ln == 0 or ln == lineno)
        ):
            return str(action)
    return str(getattr(warnings, "defaultaction", "default"))


def _matches(pattern: object, value: str) -> bool:
    if pattern is None:
        return True
    if isinstance(pattern, str):
        return pattern == value
    match = getattr(pattern, "match", None)
    return bool(match(value)) if match is not None else False


def _site_already_warned(site: tuple[str, int, str]) -> bool:
    """Whether ``site`` (filename, line number, kind of use) warned since the warning
    filters last changed; marks it if not.

    The kind is part of the key: a legacy look-up and a construction on one line are two
    uses, each warned about once.

    ``catch_warnings`` swaps the filter list and ``simplefilter``/``filterwarnings``
    mutate it; either starts a new epoch (as the registry version does inside CPython).
    The old list is kept referenced so that its id cannot be reused by a new one.
    """
    global _epoch_filters, _epoch_snapshot
    current = warnings.filters
    snapshot = tuple(current)
    if current is not _epoch_filters or snapshot != _epoch_snapshot:
        _epoch_filters, _epoch_snapshot = current, snapshot
        _warned_sites.clear()
    if site in _warned_sites:
        return True
    _warned_sites.add(site)
    return False


# --- the entry point -----------------------------------------------------------------------


def report(
    kind: str,
    symbol: str,
    message: str,
    replacement: str,
    *,
    start: FrameType | None = None,
) -> None:
    """Record one deprecated use and warn about it, blaming the caller's line.

    ``start``: the frame to start looking from (default: the caller of ``report``).
    """
    __tracebackhide__ = True  # pytest: a warning raised as an error points at the user
    prefixes = skip_prefixes()
    origin = start if start is not None else sys._getframe(1)
    frame = user_frame(prefixes, origin)
    if frame is None:  # no frame outside compat and torch: blame the outermost one
        frame = origin
        while frame.f_back is not None:
            frame = frame.f_back
    filename, lineno = frame.f_code.co_filename, frame.f_lineno
    if _listeners:
        event = Event(kind, symbol, filename, lineno, replacement, message)
        for listener in tuple(_listeners):
            listener(event)
    category = LinearA8W8QuantDeprecationWarning
    module = str(frame.f_globals.get("__name__", "<unknown>"))
    if _action(category, message, module, lineno) == "default" and _site_already_warned(
        (filename, lineno, kind)
    ):
        return
    _warn(message, category, prefixes, frame)


def _warn(
    message: str, category: type[Warning], prefixes: tuple[str, ...], target: FrameType
) -> None:
    __tracebackhide__ = True
    if sys.version_info >= (3, 12):
        if user_frame(prefixes, sys._getframe(0)) is target:
            warnings.warn(message, category, skip_file_prefixes=prefixes)
            return
    # Before 3.12, or when the target is not what skip_file_prefixes would find (the
    # whole stack is inside compat/torch): a stacklevel counted from this very frame.
    level = _stacklevel_to(target)
    warnings.warn(message, category, stacklevel=level)


def _stacklevel_to(target: FrameType) -> int:
    """The ``stacklevel`` that makes ``warnings.warn`` called by our caller blame ``target``."""
    frame: FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and frame is not target:
        frame = frame.f_back
        while (
            frame is not None
            and frame is not target
            and _is_importlib_frame(frame.f_code.co_filename)
        ):
            frame = frame.f_back
        level += 1
    return level


def removal_notice() -> str:
    """The sentence every message ends with."""
    return (
        f"It will be removed in linear-quant-compat {REMOVAL_VERSION} "
        f"(this is {__version__}); see {DOCS_URL}"
    )
