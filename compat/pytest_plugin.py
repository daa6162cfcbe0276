"""pytest plugin: every deprecated ``LinearA8W8Quant`` call site of a test run, in one list.

Registered through the ``pytest11`` entry point; it does nothing unless one of its
options is given:

``--compat-report``
    At the end of the session, print every distinct site (``path:line``) where
    ``LinearA8W8Quant`` was constructed or reached through a legacy torch_npu import
    path, with its count, up to three test ids and the replacement to write. Sites are
    recorded whatever the warning filters say (also when the warning is ignored, or
    turned into an error), and the list never collapses, however long it is.
``--compat-strict``
    Also print the report, and make the session exit non-zero (exit code 1) when any
    site was seen.
``--compat-report-json PATH``
    Write the same report as JSON to PATH (parent folders are created).

Works with pytest-xdist: workers send their sites to the controller, which reports.
Importing this module must not import torch (pytest loads it at start-up).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from compat import _deprecation
from compat._version import __version__

PLUGIN_NAME = "linear-quant-compat-report"
MAX_TESTS = 3
MAX_REPLACEMENTS = 3
_WORKER_KEY = "linear_quant_compat_sites"
_VERBS = {"construct": "constructed", "import": "imported"}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("linear-quant-compat", "deprecated LinearA8W8Quant call sites")
    group.addoption(
        "--compat-report",
        action="store_true",
        default=False,
        help="at the end, list every site where LinearA8W8Quant was constructed or imported "
        "through a legacy torch_npu path (path:line, count, test ids, replacement)",
    )
    group.addoption(
        "--compat-strict",
        action="store_true",
        default=False,
        help="like --compat-report, and exit non-zero when any such site was seen",
    )
    group.addoption(
        "--compat-report-json",
        metavar="PATH",
        default=None,
        help="write the LinearA8W8Quant call-site report as JSON to PATH",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    # As early as possible, so that legacy imports in conftest.py files are seen too.
    _activate(early_config, early_config.known_args_namespace)


def pytest_configure(config: pytest.Config) -> None:
    _activate(config, config.option)


def _activate(config: pytest.Config, options: Any) -> None:
    if config.pluginmanager.has_plugin(PLUGIN_NAME):
        return
    show = bool(getattr(options, "compat_report", False))
    strict = bool(getattr(options, "compat_strict", False))
    json_path = getattr(options, "compat_report_json", None)
    if not (show or strict or json_path):
        return
    if json_path and Path(json_path).is_dir():
        raise pytest.UsageError(
            f"--compat-report-json: {json_path!r} is a directory; give a file path"
        )
    reporter = CompatReporter(config, show=show or strict, strict=strict, json_path=json_path)
    config.pluginmanager.register(reporter, PLUGIN_NAME)
    _deprecation.add_listener(reporter.on_event)


@dataclass
class Site:
    """One distinct place of deprecated use."""

    path: str
    line: int
    kind: str
    symbol: str
    count: int = 0
    tests: list[str] = field(default_factory=list)
    more_tests: int = 0
    replacements: list[str] = field(default_factory=list)

    def add(self, count: int, tests: list[str], more_tests: int, replacements: list[str]) -> None:
        self.count += count
        for test in tests:
            if test in self.tests:
                continue
            if len(self.tests) < MAX_TESTS:
                self.tests.append(test)
            else:
                self.more_tests += 1
        self.more_tests += more_tests
        for replacement in replacements:
            if replacement not in self.replacements and len(self.replacements) < MAX_REPLACEMENTS:
                self.replacements.append(replacement)

    def as_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "line": self.line,
            "kind": self.kind,
            "symbol": self.symbol,
            "count": self.count,
            "tests": list(self.tests),
            "more_tests": self.more_tests,
            "replacement": self.replacements[0] if self.replacements else None,
            "other_replacements": self.replacements[1:],
        }


class CompatReporter:
    """Collects the events of :mod:`compat._deprecation` and reports them."""

    def __init__(
        self, config: pytest.Config, *, show: bool, strict: bool, json_path: str | None
    ) -> None:
        self.config = config
        self.show = show
        self.strict = strict
        self.json_path = json_path
        self.sites: dict[tuple[str, int, str, str], Site] = {}
        self.current = "(session start)"
        self._seen_tests: dict[tuple[str, int, str, str], set[str]] = {}
        self._lock = threading.Lock()
        self._failed_strict = False

    # --- collecting -------------------------------------------------------------------

    def _path(self, filename: str) -> str:
        try:
            rel = os.path.relpath(filename, self.config.rootpath)
        except ValueError:  # another drive on Windows
            return filename
        return filename if rel.startswith(os.pardir) else rel.replace(os.sep, "/")

    def on_event(self, event: _deprecation.Event) -> None:
        key = (self._path(event.filename), event.lineno, event.kind, event.symbol)
        with self._lock:
            site = self.sites.get(key)
            if site is None:
                site = self.sites[key] = Site(*key)
            seen = self._seen_tests.setdefault(key, set())
            new_test = self.current not in seen
            seen.add(self.current)
            site.add(1, [self.current] if new_test else [], 0, [event.replacement])

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Generator[None, None, None]:
        self.current = item.nodeid
        yield
        self.current = "(between tests)"

    @pytest.hookimpl(hookwrapper=True)
    def pytest_make_collect_report(
        self, collector: pytest.Collector
    ) -> Generator[None, None, None]:
        previous = self.current
        self.current = f"{collector.nodeid or '.'} (collection)"
        yield
        self.current = previous

    # --- pytest-xdist ------------------------------------------------------------------

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        """Controller: merge what a worker collected."""
        payload = getattr(node, "workeroutput", {}).get(_WORKER_KEY)
        if not payload:
            return
        for item in json.loads(payload):
            key = (item["path"], item["line"], item["kind"], item["symbol"])
            with self._lock:
                site = self.sites.get(key)
                if site is None:
                    site = self.sites[key] = Site(*key)
                replacements = [r for r in [item["replacement"], *item["other_replacements"]] if r]
                site.add(item["count"], item["tests"], item["more_tests"], replacements)

    # --- reporting --------------------------------------------------------------------

    def ordered(self) -> list[Site]:
        return sorted(self.sites.values(), key=lambda s: (s.path, s.line, s.kind, s.symbol))

    def as_json(self) -> dict[str, Any]:
        sites = self.ordered()
        return {
            "tool": "linear-quant-compat",
            "version": __version__,
            "removal_version": _deprecation.REMOVAL_VERSION,
            "docs": _deprecation.DOCS_URL,
            "total_sites": len(sites),
            "total_uses": sum(s.count for s in sites),
            "sites": [s.as_json() for s in sites],
        }

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        workeroutput = getattr(self.config, "workeroutput", None)
        if workeroutput is not None:  # an xdist worker: the controller reports
            workeroutput[_WORKER_KEY] = json.dumps([s.as_json() for s in self.ordered()])
            return
        if self.json_path:
            path = Path(self.json_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(self.as_json(), indent=2) + "\n", encoding="utf-8")
            os.replace(tmp, path)
        if self.strict and self.sites and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
            self._failed_strict = True

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if getattr(self.config, "workeroutput", None) is not None or not self.show:
            return
        sites = self.ordered()
        write = terminalreporter.write_line
        if not sites:
            terminalreporter.write_sep(
                "=", "linear-quant-compat: no deprecated LinearA8W8Quant use"
            )
            return
        uses = sum(s.count for s in sites)
        terminalreporter.write_sep(
            "=",
            f"linear-quant-compat: {len(sites)} deprecated LinearA8W8Quant call site"
            f"{'s' if len(sites) != 1 else ''} ({uses} use{'s' if uses != 1 else ''})",
            yellow=True,
        )
        for site in sites:
            what = _VERBS.get(site.kind, site.kind)
            if site.kind == "import":
                what += f" as {site.symbol}"
            write(f"{site.path}:{site.line}: {what}, {site.count}x")
            more = f" (+{site.more_tests} more)" if site.more_tests else ""
            write(f"    tests: {', '.join(site.tests)}{more}")
            if site.replacements:
                write(f"    replace with: {' | '.join(site.replacements)}")
        write(f"See {_deprecation.DOCS_URL}")
        if self.json_path:
            write(f"JSON report: {self.json_path}")
        if self._failed_strict:
            write(
                f"--compat-strict: failing the session: {len(sites)} deprecated call site(s) seen",
                red=True,
            )

    def pytest_unconfigure(self) -> None:
        _deprecation.remove_listener(self.on_event)
