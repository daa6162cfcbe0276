"""Decide which uses can be fixed safely and rewrite them by splicing the source text.

Only the exact spans of the affected names, arguments and imports are replaced, so
formatting and comments elsewhere stay as they were. A name's import is rewritten when
every use of it in the module can be fixed ("group" below: the bindings of one name in
one scope and the loads that resolve to them). Otherwise, where the name is bound only by
imports of the deprecated class, each use that can be fixed on its own still is: it is
renamed to ``LinearQuant``, imported beside the legacy import, which stays for the uses
that remain (see :meth:`_Planner.splittable`); the others are reported with the reason.

Call mapping (legacy positional order ``in_features, out_features, bias, offset, device,
dtype, output_dtype``): positional arguments 3 to 7 become keywords; a missing or
``None`` ``output_dtype`` becomes ``output_dtype=torch.int8``; string dtypes (any case)
become torch dtypes; a torch dtype attribute is kept; a name bound once to such a literal
before the call, in the same function or at module level, counts as the literal; ``int32``
output, any other expression, ``*args``/``**kwargs`` and unknown keywords are not fixable.
"""

from __future__ import annotations

import ast
import tokenize
from dataclasses import dataclass, field

from compat.scan._symbols import (
    LEGACY_DTYPE_STRINGS,
    LEGACY_INT32_STRINGS,
    REPLACEMENT,
    TARGET,
    Binding,
    Scope,
    SymbolTable,
    family,
    is_deprecated,
)
from compat.scan._text import Edit, FixError, SourceText, Token, apply_edits, parse_module
from compat.scan.finder import Analysis, Site, find
from compat.upstream import (
    COMPAT_REPLACEMENT_MODULE,
    CONTRIB,
    INT32_REASON,
    LEGACY_OUTPUT_DTYPES,
    MODULE,
    PACKAGE,
)
from compat.upstream import LEGACY_POSITIONAL as UPSTREAM_POSITIONAL

# the positional order of the old LinearA8W8Quant constructor
LEGACY_POSITIONAL: tuple[str, ...] = ("in_features", "out_features", *UPSTREAM_POSITIONAL)
KEYWORDS = frozenset({*LEGACY_POSITIONAL, "pertoken_scale"})
# modules that export LinearQuant, and where LinearQuant is imported from otherwise
_COMPAT = COMPAT_REPLACEMENT_MODULE.partition(".")[0]
EXPORTERS = frozenset({MODULE, CONTRIB, _COMPAT})
PROVIDERS = {PACKAGE: MODULE, _COMPAT: _COMPAT}
DTYPE_STRINGS = LEGACY_DTYPE_STRINGS  # looked up lowercased, as the adapter does
# torch dtypes LinearA8W8Quant accepted for output_dtype: such an argument is kept as written
# (torch.half is torch's own alias of torch.float16)
TORCH_DTYPES = frozenset({*(f"torch.{name}" for name in LEGACY_OUTPUT_DTYPES), "torch.half"})
INT32 = frozenset(f"torch.{name}" for name in LEGACY_INT32_STRINGS)
_QUOTES = ('"', "'", '"""', "'''")


@dataclass
class Outcome:
    """Whether a site will be fixed, and why not."""

    site: Site
    fixable: bool
    reason: str | None


@dataclass
class Plan:
    """What fixing a module would do: per-site outcomes and the text edits."""

    outcomes: list[Outcome]
    edits: list[Edit]


@dataclass(eq=False)
class _Group:
    """All bindings of one name in one scope, and the uses that resolve to them."""

    scope: Scope
    name: str
    bindings: list[Binding]
    uses: list[Site] = field(default_factory=list)
    new_name: str = ""
    edits: list[Edit] = field(default_factory=list)
    own: str | None = None  # reason the group cannot be converted (own conditions)
    own_done: bool = False
    convertible: bool | None = None
    split: bool | None = None  # whether its fixable uses can move to LinearQuant one by one
    split_edits: list[Edit] = field(default_factory=list)  # import LinearQuant beside it


def plan(source: SourceText, tree: ast.Module, analysis: Analysis | None = None) -> Plan:
    """Analyse *tree* (parsed from *source*) and plan every safe fix."""
    return _Planner(source, tree, analysis or find(tree, source)).run()


def fix_text(text: str, filename: str = "<string>") -> tuple[str, Plan]:
    """The fixed text of a module and the plan behind it (text unchanged: nothing to fix)."""
    tree = parse_module(text, filename)
    source = SourceText(text)
    result = plan(source, tree)
    if not result.edits:
        return text, result
    new_text = apply_edits(text, result.edits)
    try:
        parse_module(new_text, filename)
    except SyntaxError as exc:  # pragma: no cover - a bug in the fixer, never user input
        raise FixError(f"the fix would produce invalid Python ({exc.msg})") from exc
    return new_text, result


class _Planner:
    def __init__(self, source: SourceText, tree: ast.Module, analysis: Analysis) -> None:
        self.src = source
        self.tree = tree
        self.table: SymbolTable = analysis.table
        self.sites = analysis.sites
        self.groups: dict[tuple[int, str], _Group] = {}
        self.site_by_node: dict[int, Site] = {
            id(site.ref.node): site for site in self.sites if site.ref is not None
        }
        self.local: dict[int, str | None] = {}  # id(site) -> local reason
        self.site_edits: dict[int, list[Edit]] = {}
        self.needs_torch: set[int] = set()  # sites whose fix adds ``import torch``
        self._torch_edit: Edit | str | None = None
        self._visiting: set[int] = set()
        self._counts: dict[tuple[int, str], int] = {}  # (id(scope node), name) -> bindings

    # -- driver -------------------------------------------------------------------------

    def run(self) -> Plan:
        outcomes: list[Outcome] = []
        edits: list[Edit] = []
        converted: dict[int, _Group] = {}
        split: dict[int, _Group] = {}
        for site in self.sites:
            reason = self.final(site)
            outcomes.append(Outcome(site, reason is None, reason))
            if reason is None:
                edits.extend(self.site_edits.get(id(site), []))
                group = self.group_of(site)
                if group is not None:
                    if self.convertible(group):
                        converted[id(group)] = group
                        target = group.new_name
                    else:  # fixed on its own: the legacy import stays (see final)
                        split[id(group)] = group
                        target = REPLACEMENT
                    ref = site.ref
                    if ref is not None and isinstance(ref.node, ast.Name):
                        if ref.node.id != target:
                            edits.append(self._replace(ref.node, target))
                if site.kind == "alias" and site.binding is not None:
                    alias = self.group(site.binding.scope, site.binding.name)
                    converted[id(alias)] = alias
        for group in converted.values():
            edits.extend(group.edits)
        for group in split.values():
            edits.extend(group.split_edits)
        if any(id(o.site) in self.needs_torch for o in outcomes if o.fixable):
            torch_edit = self.torch_import()
            assert isinstance(torch_edit, Edit)  # checked when the site was planned
            edits.append(torch_edit)
        return Plan(outcomes, edits)

    def final(self, site: Site) -> str | None:
        """Why *site* will not be fixed (None: it will be)."""
        if site.kind != "import":
            reason = self.local_reason(site)
            if reason is not None:
                return reason
        group = self.group_of(site)
        if group is None or self.convertible(group):
            return None
        reason = group.own or f"{group.name} cannot be renamed here"
        if not self.splittable(group):
            return reason
        if site.kind == "import":
            return (
                f"{reason}; the import stays while such a use remains (the fixable uses "
                f"get {REPLACEMENT}, imported beside it)"
            )
        if site.ref is not None and site.ref.role == "del":
            return f"del of {group.name} while other uses of it remain"
        return None

    # -- groups -------------------------------------------------------------------------

    def group_of(self, site: Site) -> _Group | None:
        """The group of the name *site* uses (None for attribute paths and getattr)."""
        if site.kind == "import" and site.binding is not None:
            return self.group(site.binding.scope, site.binding.name)
        if site.ref is not None and isinstance(site.ref.node, ast.Name):
            name = site.ref.node.id
            owner = self.table.defining_scope(site.ref.scope, name) or self.table.module
            return self.group(owner, name)
        return None

    def group(self, scope: Scope, name: str) -> _Group:
        key = (id(scope), name)
        group = self.groups.get(key)
        if group is None:
            group = _Group(scope, name, list(scope.bindings.get(name, [])))
            group.new_name = REPLACEMENT if name == TARGET else name
            self.groups[key] = group
            for site in self.sites:
                if site.ref is not None and isinstance(site.ref.node, ast.Name):
                    if site.ref.node.id == name and self._owner(site) is scope:
                        group.uses.append(site)
        return group

    def _owner(self, site: Site) -> Scope:
        assert site.ref is not None and isinstance(site.ref.node, ast.Name)
        owner = self.table.defining_scope(site.ref.scope, site.ref.node.id)
        return owner or self.table.module

    def convertible(self, group: _Group) -> bool:
        if group.convertible is not None:
            return group.convertible
        if id(group) in self._visiting:
            return False
        self._visiting.add(id(group))
        try:
            ok = self.own_reason(group) is None
            for binding in group.bindings:
                if not ok:
                    break
                value_site = self._alias_value_site(binding)
                if value_site is not None and self.final(value_site) is not None:
                    group.own = f"the alias at line {_line(value_site.node)} cannot be fixed"
                    ok = False
        finally:
            self._visiting.discard(id(group))
        group.convertible = ok
        return ok

    def splittable(self, group: _Group) -> bool:
        """Whether the uses of *group* can be fixed one by one, the legacy import kept.

        Needs the name to be bound by ``from ... import`` statements of the deprecated
        class only, each of which can get ``LinearQuant`` beside it (in the same statement,
        or a new line importing it from where the fixer imports it from), the name
        ``LinearQuant`` to be free (or bound the same way next to it), and the class to be
        imported from one family only (see :meth:`_import_families`).
        """
        if group.split is None:
            group.split = False
            edits: list[Edit] = []
            ok = (
                bool(group.bindings)
                and self._rename_conflict(group, REPLACEMENT) is None
                and len(self._import_families()) == 1
            )
            for binding in group.bindings if ok else []:
                if binding.kind != "import" or not is_deprecated(binding.qualname):
                    ok = False
                    break
                try:
                    edits.extend(self._beside_edits(binding))
                except FixError:
                    ok = False
                    break
            if ok:
                group.split, group.split_edits = True, edits
        return group.split

    def _import_families(self) -> set[str | None]:
        """The families the deprecated class is imported from anywhere in the file.

        Fixing uses one by one binds the name ``LinearQuant``; with imports from both
        torch_npu and compat, that name would stand for two classes, one shadowing the
        other in nested scopes, so no uses are fixed that way then.
        """
        return {family(b.qualname) for _, b in self.table.imports if is_deprecated(b.qualname)}

    def _beside_edits(self, binding: Binding) -> list[Edit]:
        """Import LinearQuant next to the legacy import *binding* (nothing if it already is)."""
        stmt, alias = binding.stmt, binding.node
        if not isinstance(stmt, ast.ImportFrom) or not isinstance(alias, ast.alias):
            raise FixError("unexpected import form")
        assert binding.qualname is not None
        module = binding.qualname.rsplit(".", 1)[0]
        fam = family(module)
        assert fam is not None
        if self._has_replacement(binding, fam):
            return []
        if module in EXPORTERS:
            end = self.src.end(alias)
            return [Edit(end, end, f", {REPLACEMENT}")]
        start = self.src.start(stmt)
        line_start = self.src.line_start(start)
        indent = self.src.text[line_start:start]
        last_line: int = getattr(stmt, "end_lineno", 1)
        starts = self.src.line_starts
        line_end = starts[last_line] if last_line < len(starts) else len(self.src.text)
        rest = self.src.text[self.src.end(stmt) : line_end].strip()
        if indent.strip() or (rest and not rest.startswith("#")):
            raise FixError("the import shares its line with other code")
        newline = self.src.newline()
        prefix = "" if self.src.text[:line_end].endswith(("\n", "\r")) else newline
        provider = PROVIDERS[fam]
        return [
            Edit(
                line_end, line_end, f"{prefix}{indent}from {provider} import {REPLACEMENT}{newline}"
            )
        ]

    def own_reason(self, group: _Group) -> str | None:
        """Why *group* cannot be converted, judged by its own bindings and uses."""
        if group.own_done:
            return group.own
        group.own_done = True
        group.own = self._own_reason(group)
        return group.own

    def _own_reason(self, group: _Group) -> str | None:
        name = group.name
        if group.scope.parent is None and name in self.table.all_names:
            return f"{name} is re-exported through __all__"
        if group.scope.kind == "class":
            return f"{name} is a class attribute; its uses through self/cls are not visible"
        if not group.bindings and not set(self.table.module.stars) & EXPORTERS:
            return f"{name} is not bound by an import that can be rewritten"
        aliases = [b for b in group.bindings if self._alias_value_site(b) is not None]
        if len(aliases) > 1:
            return f"{name} is assigned more than once"
        conflict = self._rename_conflict(group, group.new_name)
        if conflict is not None:
            return conflict
        for binding in group.bindings:
            try:
                group.edits.extend(self._binding_edits(group, binding))
            except FixError as exc:
                return f"{name} (line {_line(binding.node)}): {exc}"
        for use in group.uses:
            reason = self.local_reason(use)
            if reason is not None:
                line = _line(use.node)
                return f"{name} is also used at line {line} ({use.kind}), which cannot be fixed"
        return None

    def _alias_value_site(self, binding: Binding) -> Site | None:
        if binding.kind != "assign" or binding.value is None:
            return None
        site = self.site_by_node.get(id(binding.value))
        return site if site is not None and site.kind == "alias" else None

    def _rename_conflict(self, group: _Group, new_name: str) -> str | None:
        """Why the uses of *group* cannot be renamed to *new_name* (None: they can)."""
        if new_name == group.name:
            return None
        families = {family(b.qualname) for b in group.bindings if b.kind == "import" and b.qualname}
        for scope in self.table.scopes:
            for binding in scope.bindings.get(new_name, []):
                same = (
                    binding.kind == "import"
                    and binding.qualname is not None
                    and binding.qualname.endswith("." + REPLACEMENT)
                    and scope is group.scope
                    and families == {family(binding.qualname)}
                )
                if not same:
                    line = _line(binding.node)
                    return f"the name {new_name} is already bound at line {line}"
        return None

    def _binding_edits(self, group: _Group, binding: Binding) -> list[Edit]:
        if binding.kind == "import" and is_deprecated(binding.qualname):
            return self._import_edits(group, binding)
        value = binding.value
        fallback = (
            binding.kind == "assign"
            and binding.in_except
            and isinstance(value, ast.Constant)
            and value.value is None
        )
        if fallback or self._alias_value_site(binding) is not None:
            if group.new_name == group.name:
                return []
            return [self._replace(binding.node, group.new_name)]
        raise FixError(f"{group.name} is also bound to something else")

    def _import_edits(self, group: _Group, binding: Binding) -> list[Edit]:
        stmt = binding.stmt
        alias = binding.node
        if not isinstance(stmt, ast.ImportFrom) or not isinstance(alias, ast.alias):
            raise FixError("unexpected import form")
        assert binding.qualname is not None
        module = binding.qualname.rsplit(".", 1)[0]
        fam = family(module)
        assert fam is not None
        provider = module if module in EXPORTERS else PROVIDERS[fam]
        if group.new_name == REPLACEMENT and self._has_replacement(binding, fam):
            return self._remove_alias(stmt, alias, binding)
        new_name = group.new_name
        text = REPLACEMENT if new_name == REPLACEMENT else f"{REPLACEMENT} as {new_name}"
        edits = [Edit(self.src.start(alias), self.src.end(alias), text)]
        if provider != module:
            if len(stmt.names) != 1:
                raise FixError(f"the import also imports other names from {module}")
            edits.append(self._module_edit(stmt, provider))
        return edits

    def _has_replacement(self, binding: Binding, fam: str) -> bool:
        """Whether LinearQuant of the same family is imported in the same statement list
        (by another import: ``import LinearA8W8Quant as LinearQuant`` binds the legacy
        class under that name)."""
        for other in binding.scope.bindings.get(REPLACEMENT, []):
            if (
                other.kind == "import"
                and other.node is not binding.node
                and other.block is binding.block
                and other.qualname is not None
                and not is_deprecated(other.qualname)
                and family(other.qualname) == fam
            ):
                return True
        return False

    def _remove_alias(self, stmt: ast.ImportFrom, alias: ast.alias, binding: Binding) -> list[Edit]:
        names = stmt.names
        if len(names) == 1:
            return [self._remove_stmt(stmt, binding)]
        index = next(i for i, n in enumerate(names) if n is alias)
        if index + 1 < len(names):
            return [Edit(self.src.start(alias), self.src.start(names[index + 1]), "")]
        return [Edit(self.src.end(names[index - 1]), self.src.end(alias), "")]

    def _remove_stmt(self, stmt: ast.stmt, binding: Binding) -> Edit:
        start, end = self.src.start(stmt), self.src.end(stmt)
        if binding.block is not None and len(binding.block) == 1:
            return Edit(start, end, "pass")
        line_start = self.src.line_start(start)
        last_line: int = getattr(stmt, "end_lineno", 1)
        starts = self.src.line_starts
        line_end = starts[last_line] if last_line < len(starts) else len(self.src.text)
        rest = self.src.text[end:line_end].strip()
        if self.src.text[line_start:start].strip() or (rest and not rest.startswith("#")):
            raise FixError("the import shares its line with other code")
        return Edit(line_start, line_end, "")

    def _module_edit(self, stmt: ast.ImportFrom, provider: str) -> Edit:
        tokens = self.src.tokens(self.src.start(stmt), self.src.end(stmt))
        names = [t.string for t in tokens]
        if not names or names[0] != "from" or "import" not in names:
            raise FixError("cannot locate the module name of the import")
        stop = names.index("import")
        return Edit(tokens[1].start, tokens[stop - 1].end, provider)

    # -- single sites -------------------------------------------------------------------

    def local_reason(self, site: Site) -> str | None:
        """Why *site* cannot be fixed, ignoring the rest of its group (None: it can)."""
        key = id(site)
        if key in self.local:
            return self.local[key]
        self.local[key] = "circular alias"  # guards alias cycles while computing
        reason = self._local_reason(site)
        self.local[key] = reason
        return reason

    def _local_reason(self, site: Site) -> str | None:
        if site.reason is not None:
            return site.reason
        if site.kind in ("subclass", "dynamic"):  # pragma: no cover - finder gives a reason
            return "not fixable"
        if site.kind == "alias":
            assert site.binding is not None
            target = self.group(site.binding.scope, site.binding.name)
            reason = self.own_reason(target)
            if reason is not None:
                return reason
        try:
            edits = self._site_edits(site)
        except FixError as exc:
            return str(exc)
        self.site_edits[id(site)] = edits
        return None

    def _site_edits(self, site: Site) -> list[Edit]:
        """The edits of one site: its name or attribute, and a call's arguments."""
        edits: list[Edit] = []
        ref = site.ref
        if ref is not None and ref.string is not None:
            self._check_string(ref.string)
        if ref is not None and isinstance(ref.node, ast.Attribute):
            edits.append(self._attribute_edit(ref.node, ref.scope))
        elif ref is not None and isinstance(ref.node, ast.Name):
            self._replace(ref.node, REPLACEMENT)  # only checks: run() renames the fixed uses
        if site.kind == "call":
            edits.extend(self._call_edits(site))
        return edits

    def _check_string(self, literal: ast.Constant) -> None:
        """A use inside a string annotation is renamed in place: the literal must be plain."""
        text = self.src.text[self.src.start(literal) : self.src.end(literal)]
        value = literal.value if isinstance(literal.value, str) else None
        if value is None or not any(text == f"{q}{value}{q}" for q in _QUOTES):
            shown = text if len(text) <= 60 else text[:57] + "..."
            raise FixError(f"cannot rewrite inside the string annotation {shown}")

    def _replace(self, node: ast.AST, text: str) -> Edit:
        start, end = self.src.start(node), self.src.end(node)
        if isinstance(node, ast.Name) and self.src.text[start:end] != node.id:
            raise FixError("cannot locate the name in the source text")
        return Edit(start, end, text)

    def _attribute_edit(self, node: ast.Attribute, scope: Scope) -> Edit:
        """``<module>.LinearA8W8Quant`` -> ``<module>.LinearQuant`` (also via a submodule)."""
        current: ast.expr = node.value
        while True:
            names = self.table.resolve(current, scope)
            only = next(iter(names)) if len(names) == 1 else None
            if only is not None and only in EXPORTERS:
                end = self.src.end(node)
                if not self.src.text[:end].endswith(TARGET):
                    raise FixError("cannot locate the attribute in the source text")
                return Edit(self.src.end(current), end, f".{REPLACEMENT}")
            if not isinstance(current, ast.Attribute):
                raise FixError("no module that exports LinearQuant in this attribute path")
            current = current.value

    # -- constructor calls --------------------------------------------------------------

    def _call_edits(self, site: Site) -> list[Edit]:
        call = site.call
        assert call is not None
        args = call.args[1:] if site.partial else call.args
        if any(isinstance(a, ast.Starred) for a in call.args) or any(
            k.arg is None for k in call.keywords
        ):
            raise FixError("*args/**kwargs hide which arguments are passed")
        if len(args) > len(LEGACY_POSITIONAL):
            raise FixError("too many positional arguments")
        given: dict[str, ast.expr] = dict(zip(LEGACY_POSITIONAL, args, strict=False))
        for keyword in call.keywords:
            assert keyword.arg is not None
            if keyword.arg not in KEYWORDS:
                raise FixError(f"unknown keyword argument {keyword.arg}=")
            if keyword.arg in given:
                raise FixError(f"{keyword.arg} is given twice")
            given[keyword.arg] = keyword.value
        if "in_features" not in given or "out_features" not in given:
            if site.partial:
                raise FixError(
                    "functools.partial leaves in_features/out_features open, so later calls "
                    "may pass bias/offset positionally"
                )
            raise FixError("in_features or out_features is missing")
        if len(args) > 2 and "pertoken_scale" in given:
            raise FixError("positional bias/offset (old form) mixed with pertoken_scale")
        if site.partial:
            self._check_partial_uses(call)
        dtype_text = self._output_dtype(given.get("output_dtype"), site)
        torch_name = ""
        if dtype_text is not None:
            torch_name = self._torch_name(site)
        return self._argument_edits(site, call, args, given, dtype_text, torch_name)

    def _check_partial_uses(self, call: ast.Call) -> None:
        """A partial is fixed only if every later call of it needs no rewriting itself.

        Those calls may pass legacy-only forms (positional bias, ``output_dtype=None`` or a
        string) that LinearQuant would not accept, so the partial must be bound once to a
        plain name, not exported, and only called with keywords that need no mapping.
        """
        binding = self.table.by_value.get(id(call))
        if binding is None or binding.kind != "assign" or not isinstance(binding.node, ast.Name):
            raise FixError("the functools.partial object is passed on; its calls are not visible")
        name, scope = binding.name, binding.scope
        if len(scope.bindings[name]) != 1:
            raise FixError(f"{name} is assigned more than once")
        if scope.parent is None and name in self.table.all_names:
            raise FixError(f"{name} is re-exported through __all__")
        for ref in self.table.refs:
            if not isinstance(ref.node, ast.Name) or ref.node.id != name:
                continue
            if self.table.defining_scope(ref.scope, name) is not scope:
                continue
            line = _line(ref.node)
            later = ref.parent
            if ref.role != "func" or not isinstance(later, ast.Call):
                raise FixError(f"{name} is used at line {line} other than by calling it")
            if later.args or any(k.arg is None for k in later.keywords):
                raise FixError(f"{name}(...) at line {line} passes positional arguments")
            for keyword in later.keywords:
                if keyword.arg not in KEYWORDS:
                    raise FixError(f"{name}(...) at line {line} passes {keyword.arg}=")
                if keyword.arg == "output_dtype" and (
                    self._torch_dtype(keyword.value, ref.scope) not in TORCH_DTYPES
                ):
                    raise FixError(
                        f"{name}(...) at line {line} passes output_dtype="
                        f"{self._shown(keyword.value)}, which is not a torch dtype such as "
                        "torch.int8"
                    )

    def _output_dtype(self, value: ast.expr | None, site: Site) -> str | None:
        """The torch dtype attribute to write for output_dtype (None: keep as written).

        Fixable: no value, a literal None or dtype string, a torch dtype spelled through an
        import of torch (``torch.float16``, ``th.half``), or a name bound once to one of
        these in the same function or at module level (see :meth:`_constant`), taken as
        if the literal were written at the call. Any other expression may hold a legacy
        string at run time, which LinearQuant would reject.
        """
        if value is None:
            return "int8"
        literal, literal_scope = value, site.scope
        if isinstance(value, ast.Name):
            literal, literal_scope = self._constant(value, site)
        if isinstance(literal, ast.Constant):
            if literal.value is None:
                return "int8"
            if isinstance(literal.value, str):
                lowered = literal.value.lower()
                if lowered in LEGACY_INT32_STRINGS:
                    raise FixError(INT32_REASON)
                mapped = DTYPE_STRINGS.get(lowered)
                if mapped is None:
                    raise FixError(f"unknown output_dtype string {literal.value!r}")
                return mapped
            raise FixError(f"output_dtype={literal.value!r} is not a dtype")
        if literal is not value:  # a constant bound to a torch dtype: as if written here
            dtype = self._torch_dtype(literal, literal_scope)
            if dtype in TORCH_DTYPES:
                return None  # the name holds an accepted torch dtype: keep it
            if dtype in INT32:
                raise FixError(INT32_REASON)
            assert dtype is not None  # _constant only follows torch attributes
            raise FixError(
                f"output_dtype={self._shown(value)} ({dtype}) was always rejected by "
                "LinearA8W8Quant"
            )
        dtype = self._torch_dtype(value, site.scope)
        if dtype in TORCH_DTYPES:
            return None
        if dtype in INT32 or self.table.resolve(value, site.scope) & INT32:
            raise FixError(INT32_REASON)
        shown = self._shown(value)
        if dtype is not None:
            spelled = dtype if shown == dtype else f"{shown} ({dtype})"
            raise FixError(f"output_dtype={spelled} was always rejected by LinearA8W8Quant")
        if isinstance(value, ast.Name):
            raise FixError(
                f"output_dtype={shown}: {shown} is not bound exactly once, before this call and "
                "in this function or at module level, to None, a dtype string or a torch "
                "dtype; its value at run time (maybe a legacy string) cannot be mapped"
            )
        raise FixError(
            f"output_dtype={shown} is neither None, a dtype string nor a torch dtype such as "
            "torch.int8; its value at run time (maybe a legacy string) cannot be mapped"
        )

    def _torch_dtype(self, value: ast.expr, scope: Scope) -> str | None:
        """``torch.<name>`` when *value* spells a torch attribute through imports only."""
        qualname = self._imported(value, scope)
        if qualname is None or qualname.split(".", 1)[0] != "torch":
            return None
        return qualname

    def _imported(self, expr: ast.expr, scope: Scope) -> str | None:
        """The qualified name of a name/attribute chain whose root is bound only by imports."""
        if isinstance(expr, ast.Attribute):
            base = self._imported(expr.value, scope)
            return None if base is None else f"{base}.{expr.attr}"
        if not isinstance(expr, ast.Name):
            return None
        owner = self.table.defining_scope(scope, expr.id)
        if owner is None:
            return None
        names = {b.qualname if b.kind == "import" else None for b in owner.bindings[expr.id]}
        return names.pop() if len(names) == 1 else None

    def _constant(self, name: ast.Name, site: Site) -> tuple[ast.expr, Scope]:
        """The literal a local or module-level constant holds (else *name*), and its scope.

        Followed only for a name bound exactly once in the function (or module) whose
        binding *site* sees, by a plain assignment at the top level of that function's
        (module's) body, to a literal: ``None``, a string, or a torch attribute spelled
        through an import of torch (``torch.float16``). Any other binding of the name in
        that function or module (a parameter, a loop target, ``+=``, ``del``, ``with ...
        as``, an import, a ``global``/``nonlocal`` declaration anywhere) stops it. In a
        function the assignment must come before *site*; at module level only when
        *site* itself runs at import time.
        """
        owner = self.table.defining_scope(site.scope, name.id)
        if owner is None or owner.kind not in ("module", "function"):
            return name, site.scope
        body = getattr(owner.node, "body", None)
        bindings = owner.bindings[name.id]
        if not isinstance(body, list) or len(bindings) != 1:
            return name, site.scope
        binding = bindings[0]
        value = binding.value
        if (
            binding.kind != "assign"
            or binding.block is not body
            or not isinstance(binding.stmt, ast.Assign | ast.AnnAssign)
            or binding.type_checking
            or binding.deferred
            or value is None
            or not self._is_literal(value, owner)
        ):
            return name, site.scope
        inline = owner.kind == "function" or self._runs_inline(site.scope, owner)
        if inline and not _before(binding.node, _at(site)):
            return name, site.scope
        key = (id(owner.node), name.id)
        if key not in self._counts:
            self._counts[key] = _binding_count(owner.node, name.id)
        if self._counts[key] != 1:
            return name, site.scope
        return value, owner

    def _is_literal(self, value: ast.expr, scope: Scope) -> bool:
        """None, a string literal, or a torch attribute spelled through imports."""
        if isinstance(value, ast.Constant):
            return value.value is None or isinstance(value.value, str)
        return isinstance(value, ast.Attribute) and self._torch_dtype(value, scope) is not None

    def _shown(self, node: ast.AST) -> str:
        """The source text of *node* on one line, shortened for a message."""
        text = " ".join(self.src.text[self.src.start(node) : self.src.end(node)].split())
        return text if len(text) <= 60 else text[:57] + "..."

    def _argument_edits(
        self,
        site: Site,
        call: ast.Call,
        args: list[ast.expr],
        given: dict[str, ast.expr],
        dtype_text: str | None,
        torch_name: str,
    ) -> list[Edit]:
        value = given.get("output_dtype")
        tokens = self.src.tokens(self.src.end(call.func), self.src.end(call))
        regions, trailing, close = _regions(tokens)
        items: list[ast.AST] = [*call.args, *call.keywords]
        items.sort(key=lambda n: (getattr(n, "lineno", 0), getattr(n, "col_offset", 0)))
        if len(regions) != len(items):
            raise FixError("cannot match the call's arguments to the source text")
        region_of = {id(item): region for item, region in zip(items, regions, strict=True)}
        edits: list[Edit] = []
        for index, arg in enumerate(args):
            if index >= 2:
                start = region_of[id(arg)][0]
                edits.append(Edit(start, start, f"{LEGACY_POSITIONAL[index]}="))
        if dtype_text is None:
            return edits
        dtype = f"{torch_name}.{dtype_text}"
        if value is not None:
            edits.append(Edit(self.src.start(value), self.src.end(value), dtype))
            return edits
        edits.append(self._append_keyword(regions, trailing, close, f"output_dtype={dtype}"))
        return edits

    def _append_keyword(
        self,
        regions: list[tuple[int, int]],
        trailing: Token | None,
        close: Token,
        text: str,
    ) -> Edit:
        last_start, last_end = regions[-1]
        if trailing is None:
            return Edit(last_end, last_end, f", {text}")
        close_line = self.src.line_start(close.start)
        if close_line > last_end and not self.src.text[close_line : close.start].strip():
            indent = self.src.indent_at(last_start)
            return Edit(close_line, close_line, f"{indent}{text},{self.src.newline()}")
        return Edit(trailing.end, trailing.end, f" {text},")

    # -- torch ---------------------------------------------------------------------------

    def _torch_name(self, site: Site) -> str:
        """A name for the torch module at *site*, adding ``import torch`` if need be.

        Only bindings that exist when *site* runs count: not those under ``if
        TYPE_CHECKING:``, and, where *site* runs in the scope that binds the name (module
        level, say), not those made after it.
        """
        if self._binds_torch(site, "torch"):
            return "torch"
        for name, bindings in sorted(self.table.module.bindings.items()):
            if any(b.kind == "import" and b.qualname == "torch" for b in bindings):
                if self._binds_torch(site, name):
                    return name
        for scope in self.table.scopes:
            for binding in scope.bindings.get("torch", []):
                if binding.kind != "import" or binding.qualname != "torch":
                    line = _line(binding.node)
                    raise FixError(f"the name torch is bound to something else (line {line})")
        owner = self.table.defining_scope(site.scope, "torch")
        if owner is not None and owner.kind == "function":
            bindings = owner.bindings["torch"]
            if all(b.type_checking for b in bindings):
                raise FixError(
                    "torch is imported only under `if TYPE_CHECKING:` in this function, so "
                    "the name is unbound there at run time; import torch by hand"
                )
            at = _at(site)
            earlier = [b for b in bindings if not b.type_checking and _before(b.node, at)]
            if earlier:
                line = min(_line(b.node) for b in earlier)
                raise FixError(
                    f"torch is imported in this function only under a condition (line {line}), "
                    "so the name may be unbound at this call; import torch by hand"
                )
            line = min(_line(b.node) for b in bindings)
            raise FixError(f"torch is imported only after this call (line {line}); move it up")
        if self.table.module.stars:
            raise FixError("`import *` may bind the name torch; import torch by hand")
        edit = self.torch_import()
        if isinstance(edit, str):
            raise FixError(edit)
        self.needs_torch.add(id(site))
        return "torch"

    def _binds_torch(self, site: Site, name: str) -> bool:
        """Whether *name* is the torch module when *site* runs (see :meth:`_torch_name`):
        bound by at least one import made whatever path the code takes (in the scope's own
        statement list, not under an ``if``, loop, ``with`` or ``try``), and to torch only."""
        owner = self.table.defining_scope(site.scope, name)
        if owner is None:
            return False
        bindings = [b for b in owner.bindings[name] if not b.type_checking]
        if self._runs_inline(site.scope, owner):
            at = _at(site)
            bindings = [b for b in bindings if not b.deferred and _before(b.node, at)]
        body = getattr(owner.node, "body", None)
        unconditional = [b for b in bindings if b.block is body and body is not None]
        return bool(unconditional) and all(
            self.table.resolve_binding(b) == frozenset({"torch"}) for b in bindings
        )

    @staticmethod
    def _runs_inline(scope: Scope, owner: Scope) -> bool:
        """Whether code in *scope* runs as part of *owner*'s code (no function in between)."""
        current: Scope | None = scope
        while current is not None and current is not owner:
            if current.kind == "function":
                return False
            current = current.parent
        return current is owner

    def torch_import(self) -> Edit | str:
        """The edit that adds ``import torch`` at the top of the module (str: why not)."""
        if self._torch_edit is None:
            self._torch_edit = self._make_torch_import()
        return self._torch_edit

    def _make_torch_import(self) -> Edit | str:
        body = self.tree.body
        index = 0
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            index = 1
        while (
            index < len(body)
            and isinstance(body[index], ast.ImportFrom)
            and getattr(body[index], "module", None) == "__future__"
        ):
            index += 1
        line = self.src.newline()
        if index == len(body):
            end = len(self.src.text)
            prefix = "" if not self.src.text or self.src.text.endswith(("\n", "\r")) else line
            return Edit(end, end, f"{prefix}import torch{line}")
        stmt = body[index]
        first: ast.AST = stmt
        for decorator in getattr(stmt, "decorator_list", []):
            if decorator.lineno < getattr(first, "lineno", 0):
                first = decorator
        begin = self.src.start(first)
        line_start = self.src.line_start(begin)
        if self.src.text[line_start:begin].strip():
            return "cannot add `import torch`: the first statement shares its line"
        return Edit(line_start, line_start, f"import torch{line}")


_SCOPE_NODES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _binding_count(node: ast.AST, name: str) -> int:
    """How often *name* is bound anywhere inside *node* (nested scopes included).

    Counts every store or ``del`` of the name, parameters, imports, definitions, except
    and match captures; a ``global``/``nonlocal`` declaration of it counts as many. Made
    from the tree itself, so it does not depend on which blocks the symbol table skipped.
    """
    count = 0
    for child in ast.walk(node):
        if isinstance(child, ast.Name):
            count += child.id == name and not isinstance(child.ctx, ast.Load)
        elif isinstance(child, ast.Global | ast.Nonlocal):
            count += 2 * (name in child.names)
        elif isinstance(child, ast.arg):
            count += child.arg == name
        elif isinstance(child, ast.alias):
            count += (child.asname or child.name.split(".", 1)[0]) == name
        elif isinstance(child, _SCOPE_NODES):
            count += child.name == name and child is not node
        elif isinstance(child, ast.ExceptHandler | ast.MatchAs | ast.MatchStar):
            count += child.name == name
        elif isinstance(child, ast.MatchMapping):
            count += child.rest == name
    return count


def _line(node: ast.AST) -> int:
    return int(getattr(node, "lineno", 0))


def _at(site: Site) -> tuple[int, int]:
    """Where *site* starts running: its call, or its node."""
    node: ast.AST = site.call if site.call is not None else site.node
    return _line(node), int(getattr(node, "col_offset", 0))


def _before(node: ast.AST, at: tuple[int, int]) -> bool:
    return (_line(node), int(getattr(node, "col_offset", 0))) < at


def _regions(tokens: list[Token]) -> tuple[list[tuple[int, int]], Token | None, Token]:
    """Argument spans of a call from its tokens after the callee: ``( a , b , )``."""
    if not tokens or tokens[0].string != "(":
        raise FixError("cannot find the call's opening parenthesis")
    regions: list[tuple[int, int]] = []
    depth = 1
    start = end = -1
    last_comma: Token | None = None
    for token in tokens[1:]:
        if token.type == tokenize.OP:
            if token.string in ("(", "[", "{"):
                depth += 1
            elif token.string in (")", "]", "}"):
                depth -= 1
                if depth == 0:
                    if start >= 0:
                        regions.append((start, end))
                        last_comma = None
                    return regions, last_comma, token
            elif token.string == "," and depth == 1:
                regions.append((start, end))
                start = -1
                last_comma = token
                continue
        if start < 0:
            start = token.start
        end = token.end
    raise FixError("cannot find the end of the call")
