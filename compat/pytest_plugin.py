"""pytest plugin: every deprecated ``LinearA8W8Quant`` call site of a test run, in one list.

Registered through the ``pytest11`` entry point; it does nothing unless one of its
options is given:

``--compat-torch-npu=cpu`` (or the ini key ``compat_torch_npu = cpu``)
    Switch on compat's CPU stand-in for ``torch_npu`` (:mod:`compat.testing`) before any
    conftest is imported, so that an unchanged legacy test suite runs on a CPU. A real
    torch_npu that imports always wins; the session header says which one runs.

``--compat-report``
    At the end of the session, print every distinct site (``path:line``) where
    ``LinearA8W8Quant`` was constructed or reached through a legacy torch_npu import
    path, with its count, up to three test ids and the replacement to write. Sites are
    recorded whatever the warning filters say (also when the warning is ignored, or
    turned into an error), and the list never collapses, however long it is.
``--compat-strict``
    Also print the report, and make the session exit non-zero (exit code 1) when any
    site was seen, or when the report is incomplete.
``--compat-report-json PATH``
    Write the same report as JSON to PATH (parent folders are created).

The report is *incomplete* when code may not have run: a collection error (the module's
imports never finished), no test ran, or the session stopped early (``-x``,
``--maxfail``, an interrupt). It then says so and why, instead of "no deprecated use".

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

from compat import _deprecation, _stand_in
from compat._version import __version__

PLUGIN_NAME = "linear-quant-compat-report"
MAX_TESTS = 3
MAX_REPLACEMENTS = 3
_WORKER_KEY = "linear_quant_compat_sites"
_VERBS = {"construct": "constructed", "import": "imported"}
_STAND_IN_OPTION = "--compat-torch-npu"
_STAND_IN_INI = "compat_torch_npu"
_stand_in_source: str | None = None


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
        _STAND_IN_OPTION,
        metavar="DEVICE",
        default=None,
        help=f"'{_stand_in.ON_VALUE}': run torch_npu code on compat's CPU stand-in when no real "
        "torch_npu imports (see compat.testing)",
    )
    parser.addini(
        _STAND_IN_INI,
        f"'{_stand_in.ON_VALUE}': like {_STAND_IN_OPTION}={_stand_in.ON_VALUE}",
        default="",
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
    _switch_stand_in(early_config, early_config.known_args_namespace)
    _activate(early_config, early_config.known_args_namespace)


def pytest_configure(config: pytest.Config) -> None:
    _switch_stand_in(config, config.option)
    _activate(config, config.option)


def _switch_stand_in(config: pytest.Config, options: Any) -> None:
    """Request the torch_npu stand-in once per process, if the option or ini key says so."""
    global _stand_in_source
    if _stand_in_source is not None:
        return
    value = getattr(options, "compat_torch_npu", None)
    source = f"pytest {_STAND_IN_OPTION}={value}"
    where = _STAND_IN_OPTION
    if value is None:
        value = str(config.getini(_STAND_IN_INI)).strip()
        source = f"pytest ini {_STAND_IN_INI} = {value}"
        where = f"ini key {_STAND_IN_INI}"
    if not value:
        return
    if value.strip().lower() != _stand_in.ON_VALUE:
        raise pytest.UsageError(
            f"{where}: {value!r} is not a valid value (allowed: {_stand_in.ON_VALUE!r})"
        )
    _stand_in_source = source
    _stand_in.request(source)


def pytest_report_header(config: pytest.Config) -> str | None:
    state = _stand_in.status()  # takes up LINEAR_QUANT_COMPAT_TORCH_NPU too
    if _stand_in_source is None and not state.requested_by and _stand_in.env_value() is None:
        return None
    return f"linear-quant-compat: torch_npu stand-in {'active' if state.active else 'off'}: " + (
        state.reason
    )


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
        self._collect_errors: list[str] = []
        self._ran: set[str] = set()
        self._stopped: str | None = None
        self.incomplete: list[str] = []

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

    # --- completeness (also seen by an xdist controller: reports are forwarded) ---------

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed and report.nodeid not in self._collect_errors:
            self._collect_errors.append(report.nodeid or ".")

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "setup":
            self._ran.add(report.nodeid)

    def _incomplete_reasons(self, session: pytest.Session) -> list[str]:
        reasons = []
        if self._collect_errors:
            shown = ", ".join(self._collect_errors[:3])
            more = len(self._collect_errors) - 3
            reasons.append(
                f"{len(self._collect_errors)} collection error(s) ({shown}"
                f"{f', +{more} more' if more > 0 else ''}): code those modules import did "
                "not (all) run"
            )
        if not self._ran:
            reasons.append("no test ran")
        stopped = session.shouldstop or session.shouldfail
        if stopped:
            reasons.append(f"the session stopped early ({stopped}): later tests did not run")
        elif (
            session.exitstatus
            in (
                pytest.ExitCode.INTERRUPTED,
                pytest.ExitCode.INTERNAL_ERROR,
            )
            and not self._collect_errors
        ):
            reasons.append(f"the session ended with {session.exitstatus!r}")
        return reasons

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
            "complete": not self.incomplete,
            "incomplete_reasons": list(self.incomplete),
            "total_sites": len(sites),
            "total_uses": sum(s.count for s in sites),
            "sites": [s.as_json() for s in sites],
        }

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        workeroutput = getattr(self.config, "workeroutput", None)
        if workeroutput is not None:  # an xdist worker: the controller reports
            workeroutput[_WORKER_KEY] = json.dumps([s.as_json() for s in self.ordered()])
            return
        self.incomplete = self._incomplete_reasons(session)
        if self.json_path:
            path = Path(self.json_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(self.as_json(), indent=2) + "\n", encoding="utf-8")
            os.replace(tmp, path)
        if self.strict and (self.sites or self.incomplete):
            self._failed_strict = True
            if session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if getattr(self.config, "workeroutput", None) is not None or not self.show:
            return
        sites = self.ordered()
        write = terminalreporter.write_line
        if self.incomplete:
            terminalreporter.write_sep(
                "=", "linear-quant-compat: the LinearA8W8Quant report is INCOMPLETE", red=True
            )
            for reason in self.incomplete:
                write(f"    {reason}")
            write("    deprecated uses in code that did not run are not listed")
        if not sites:
            terminalreporter.write_sep(
                "=",
                "linear-quant-compat: no deprecated LinearA8W8Quant use"
                + (" in what ran" if self.incomplete else ""),
            )
            self._write_strict(write, sites)
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
        self._write_strict(write, sites)

    def _write_strict(self, write: Any, sites: list[Site]) -> None:
        if not self._failed_strict:
            return
        why = []
        if sites:
            why.append(f"{len(sites)} deprecated call site(s) seen")
        if self.incomplete:
            why.append("the report is incomplete")
        write(f"--compat-strict: failing the session: {' and '.join(why)}", red=True)

    def pytest_unconfigure(self) -> None:
        _deprecation.remove_listener(self.on_event)
