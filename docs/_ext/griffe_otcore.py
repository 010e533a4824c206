"""Griffe extension used by the docs build only (it does not touch otcore's sources).

otcore's docstrings are Google style with two habits that mkdocstrings does not render
well:

* an ``Example:`` section (singular) is an admonition for griffe, so its ``>>>`` lines
  come out as nested block quotes; griffe's doctest-aware section is ``Examples:``;
* Sphinx roles such as ``:class:`~otcore.Geometry``` are shown verbatim in Markdown;
* an entry naming several parameters (``tau_a, tau_b: ...``) becomes one row that matches
  no parameter of the signature.

This extension rewrites both in the loaded docstrings before they are parsed:
``Example:`` becomes ``Examples:``, and a role becomes an autorefs link when its target is
rendered in ``docs/api.md`` (so ``mkdocs build --strict`` cannot meet a broken
reference), and inline code otherwise; a shared entry ``a, b: text`` becomes ``a: text``
followed by ``b: As for `a`.``
"""

from __future__ import annotations

import re
from pathlib import Path

import griffe

_API_PAGE = Path(__file__).resolve().parent.parent / "api.md"
_ROLE = re.compile(r":(?:class|func|meth|attr|mod|data|exc|obj):`(~?)([\w.]+)`")
_EXAMPLE = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)
_LIST_SECTIONS = ("Args:", "Arguments:", "Parameters:", "Attributes:")
_SHARED_ENTRY = re.compile(r"^(\s+)(\**\w+(?:, \**\w+)+):(.*)$")


def _split_shared_entries(text: str) -> str:
    """``a, b: text`` in an Args/Attributes section -> ``a: text`` + ``b: As for `a`.``"""
    out: list[str] = []
    in_list = False
    pending: list[str] = []  # lines to add once the current entry ends
    entry_indent = None
    for line in text.splitlines():
        indent = len(line) - len(line.lstrip())
        ends_entry = line.strip() and entry_indent is not None and indent <= entry_indent
        if pending and (ends_entry or not line.strip()):
            out.extend(pending)
            pending = []
        if line.strip() and indent == 0:
            in_list = line.strip() in _LIST_SECTIONS
            entry_indent = None
            out.append(line)
            continue
        match = _SHARED_ENTRY.match(line) if in_list else None
        if match:
            pad, names, rest = match.groups()
            first, *others = [n.strip() for n in names.split(",")]
            out.append(f"{pad}{first}:{rest}")
            pending = [f"{pad}{n}: As for `{first}`." for n in others]
            entry_indent = len(pad)
            continue
        if in_list and line.strip() and (entry_indent is None or indent <= entry_indent):
            entry_indent = indent
        out.append(line)
    out.extend(pending)
    return "\n".join(out)


def _rendered_identifiers() -> list[str]:
    text = _API_PAGE.read_text(encoding="utf-8")
    return re.findall(r"^:::\s+(\S+)", text, flags=re.MULTILINE)


def _target(obj):
    return obj.final_target if obj.is_alias else obj


class OtcoreDocstrings(griffe.Extension):
    """Rewrite ``Example:`` sections and Sphinx roles in otcore's docstrings."""

    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        if pkg.path != "otcore":
            return
        self._pkg = pkg
        self._anchors: dict[str, str] = {}
        for ident in _rendered_identifiers():
            obj = self._lookup(ident)
            if obj is not None:
                self._register(ident, _target(obj))
        self._rewrite(pkg, seen=set())

    # -- which identifiers have an anchor on the API page -------------------------------
    def _lookup(self, path: str):
        if path == "otcore":
            return self._pkg
        if not path.startswith("otcore."):
            return None
        try:
            return self._pkg[path[len("otcore.") :]]
        except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            return None

    def _register(self, ident: str, obj) -> None:
        self._anchors.setdefault(obj.path, ident)
        for name, member in obj.members.items():
            if name.startswith("_") or member.is_alias:
                continue
            if member.docstring is None and not member.is_module:
                continue
            self._register(f"{ident}.{name}", member)

    def _resolve(self, name: str, obj) -> str | None:
        module = obj if obj.is_module else obj.module
        scopes = [name, f"otcore.{name}", f"{module.path}.{name}"]
        if obj.is_class:
            scopes.append(f"{obj.path}.{name}")
        elif obj.parent is not None and obj.parent.is_class:
            scopes.append(f"{obj.parent.path}.{name}")
        for path in scopes:
            found = self._lookup(path)
            if found is None:
                continue
            try:
                canonical = _target(found).path
            except (griffe.AliasResolutionError, griffe.CyclicAliasError):
                continue
            if canonical in self._anchors:
                return self._anchors[canonical]
        return None

    # -- rewriting --------------------------------------------------------------------
    def _rewrite(self, obj, seen: set[int]) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if obj.docstring is not None:
            obj.docstring.value = self._fix(obj.docstring.value, obj)
        for member in obj.members.values():
            if not member.is_alias:
                self._rewrite(member, seen)

    def _fix(self, text: str, obj) -> str:
        text = _EXAMPLE.sub(r"\1Examples:", text)
        text = _split_shared_entries(text)

        def role(match: re.Match) -> str:
            short, name = match.group(1) == "~", match.group(2)
            shown = name.rsplit(".", 1)[-1] if short else name
            anchor = self._resolve(name, obj)
            return f"[`{shown}`][{anchor}]" if anchor else f"`{shown}`"

        return _ROLE.sub(role, text)
