#!/usr/bin/env python
"""Write docs/api.md: the signature and docstring of every name ``noisystudent`` exports.

Names come in the order of ``_EXPORTS`` in noisystudent/__init__.py, grouped
under its comments ("# settings", "# data", ...). Google-style docstring
sections (Args, Returns, Raises, Example) become Markdown lists and code
blocks. The output depends only on the source: no memory addresses, no paths.

    python scripts/api_docs.py           # (re)write docs/api.md
    python scripts/api_docs.py --check   # exit 1 when docs/api.md is not current

tests/test_api_docs.py runs the check, so CI keeps the page current.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import pprint
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PACKAGE = "noisystudent"
OUTPUT = ROOT / "docs" / "api.md"
SECTIONS = ("Args", "Returns", "Raises", "Example")
LIST_SECTIONS = ("Args", "Raises")
MAX_LINE = 88  # a longer signature is written one parameter per line
_SKIP_DIRECTIVE = re.compile(r"\s*#\s*doctest:.*$")
_ENTRY = re.compile(r"^(\*{0,2}[\w<>]+(?: \([^)]*\))?):\s*(.*)$")  # "name: text" or "name (type): text"

HEADER = """# API reference

Everything a notebook needs is exported by the package: `import noisystudent as ns`, then `ns.<name>`.
This page is generated from the docstrings by `scripts/api_docs.py`; do not edit it by hand.
Regenerate it with `python scripts/api_docs.py` after changing a public docstring or signature;
`python scripts/api_docs.py --check` (run by `tests/test_api_docs.py`) fails while it is out of date.
Examples marked `# doctest: +SKIP` in the source need data or a trained run; the others are run by the tests.
"""


# --- what is exported ---------------------------------------------------------------


def export_groups() -> list[tuple[str, list[str]]]:
    """(group title, names) in the order of ``_EXPORTS``, titled by the comments above each group."""
    package = importlib.import_module(PACKAGE)
    source = Path(package.__file__).read_text()
    body = source[source.index("_EXPORTS = {"):]
    body = body[:body.index("\n}") + 2]
    groups: list[tuple[str, list[str]]] = []
    for line in body.splitlines()[1:]:
        comment = re.match(r"\s*#\s*(.+)$", line)
        entry = re.match(r'\s*"(\w+)"\s*:', line)
        if comment and "->" not in comment.group(1):
            groups.append((comment.group(1).strip(), []))
        elif entry:
            if not groups:
                groups.append(("other", []))
            groups[-1][1].append(entry.group(1))
    listed = [name for _, names in groups for name in names]
    if listed != list(package._EXPORTS):
        raise SystemExit(f"scripts/api_docs.py could not read the groups of _EXPORTS in {PACKAGE}/__init__.py.")
    return groups


def exported(name: str):
    return getattr(importlib.import_module(PACKAGE), name)


# --- signatures ---------------------------------------------------------------------


def signature_text(name: str, obj) -> str:
    """``name(parameters) -> return`` with annotations as written in the source and stable defaults."""
    if inspect.isclass(obj) and issubclass(obj, BaseException):
        bases = ", ".join(base.__name__ for base in obj.__bases__)
        return f"class {name}({bases})"
    signature = inspect.signature(obj)
    module = sys.modules.get(getattr(obj, "__module__", ""), None)
    parts, kinds = [], [p.kind for p in signature.parameters.values()]
    for index, parameter in enumerate(signature.parameters.values()):
        if parameter.kind == parameter.KEYWORD_ONLY and inspect.Parameter.VAR_POSITIONAL not in kinds and (
                index == 0 or kinds[index - 1] != parameter.KEYWORD_ONLY):
            parts.append("*")
        parts.append(_parameter_text(parameter, module))
        if parameter.kind == parameter.POSITIONAL_ONLY and (index + 1 == len(kinds) or kinds[index + 1] != parameter.POSITIONAL_ONLY):
            parts.append("/")
    returns = ""
    if signature.return_annotation is not inspect.Signature.empty and not inspect.isclass(obj):
        returns = f" -> {_annotation_text(signature.return_annotation)}"
    prefix = f"class {name}" if inspect.isclass(obj) else name
    one_line = f"{prefix}({', '.join(parts)}){returns}"
    if len(one_line) <= MAX_LINE:
        return one_line
    return f"{prefix}(\n" + "".join(f"    {part},\n" for part in parts) + f"){returns}"


def _parameter_text(parameter: inspect.Parameter, module) -> str:
    star = {parameter.VAR_POSITIONAL: "*", parameter.VAR_KEYWORD: "**"}.get(parameter.kind, "")
    text = star + parameter.name
    if parameter.annotation is not inspect.Parameter.empty:
        text += f": {_annotation_text(parameter.annotation)}"
    if parameter.default is not inspect.Parameter.empty:
        text += f" = {default_text(parameter.default, module)}"
    return text


def _annotation_text(annotation) -> str:
    return annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)


def default_text(value, module) -> str:
    """``repr(value)``; an object whose repr holds a memory address is named by its module-level name."""
    text = repr(value)
    if " at 0x" not in text and not text.startswith("<"):
        return text
    for name, candidate in sorted(vars(module).items()) if module else ():
        if candidate is value and not name.startswith("__"):
            return name
    return f"{type(value).__name__}()"


# --- docstrings -----------------------------------------------------------------------


def docstring_sections(doc: str) -> dict[str, list[str]]:
    """Google-style sections of a cleaned docstring: '' (summary and description), then Args, Returns, ...

    Each value is the section's lines, dedented by one level.
    """
    sections: dict[str, list[str]] = {"": []}
    current = ""
    for line in doc.splitlines():
        header = re.match(r"^(\w+):\s*$", line)
        if header and header.group(1) in SECTIONS:
            current = header.group(1)
            sections[current] = []
            continue
        sections[current].append(line[4:] if current and line.startswith("    ") else line)
    return {key: _trimmed(lines) for key, lines in sections.items()}


def section_entries(lines: list[str]) -> list[tuple[str, str]]:
    """(name, text) of each entry of an Args or Raises section; continuation lines joined."""
    entries: list[tuple[str, str]] = []
    for line in lines:
        match = _ENTRY.match(line) if not line.startswith(" ") else None
        if match:
            entries.append((match.group(1), match.group(2).strip()))
        elif entries:
            entries[-1] = (entries[-1][0], f"{entries[-1][1]} {line.strip()}".strip())
    return entries


def _trimmed(lines: list[str]) -> list[str]:
    while lines and not lines[0].strip():
        lines = lines[1:]
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    return lines


def returns_text(text: str) -> str:
    """'type: what' with the type as code; text without a leading type as it is."""
    kind, colon, rest = text.partition(": ")
    if colon and " " not in kind.replace(" | ", "|").replace(", ", ","):
        return f"`{kind}`: {markdown_text(rest)}"
    return markdown_text(text)


def markdown_text(text: str) -> str:
    """reStructuredText inline markup as Markdown: ``x`` and :func:`x` become `x`."""
    text = re.sub(r":\w+:`~?\.?([^`]+)`", r"`\1`", text)
    return re.sub(r"``([^`]+)``", r"`\1`", text)


def render_docstring(doc: str) -> list[str]:
    sections = docstring_sections(doc)
    out = [markdown_text(line) for line in sections[""]]
    for title in SECTIONS:
        if title not in sections:
            continue
        out += ["", f"**{title}**", ""]
        lines = sections[title]
        if title in LIST_SECTIONS:
            out += [f"- `{name}`: {markdown_text(text)}" for name, text in section_entries(lines)]
        elif title == "Returns":
            out.append(returns_text(" ".join(line.strip() for line in lines)))
        else:
            out += ["```pycon", *(_SKIP_DIRECTIVE.sub("", line) for line in lines), "```"]
    return out


# --- one entry per name -----------------------------------------------------------------


def render_name(name: str) -> list[str]:
    obj = exported(name)
    out = [f"### `{name}`", ""]
    if not (inspect.isclass(obj) or callable(obj)):
        return out + render_constant(name, obj)
    out += ["```python", signature_text(name, obj), "```", ""]
    out += render_docstring(inspect.getdoc(obj) or "(no docstring)")
    if inspect.isclass(obj) and dataclasses.is_dataclass(obj):
        out += ["", *render_fields(obj)]
    if inspect.isclass(obj) and not issubclass(obj, BaseException):
        out += render_members(name, obj)
    return out + [""]


def render_fields(cls) -> list[str]:
    """Every field of a dataclass whose fields carry their help text: name, type, default, help."""
    rows = ["**Fields**", "", "| field | type | default | help |", "|---|---|---|---|"]
    for field in dataclasses.fields(cls):
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        help_text = field.metadata.get("help", "")
        if not field.metadata.get("affects_results", True):
            help_text += " (may change on resume)"
        cells = [f"`{field.name}`", f"`{_annotation_text(field.type)}`", f"`{default!r}`", help_text]
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return rows


def render_members(name: str, cls) -> list[str]:
    """Public methods and properties defined by the class itself, with their first docstring line."""
    rows = []
    for member, value in vars(cls).items():
        if member.startswith("_"):
            continue
        target = value.__func__ if isinstance(value, (classmethod, staticmethod)) else value
        if isinstance(value, property):
            rows.append(f"- `{name}.{member}` (property): {markdown_text(inspect.getdoc(value) or '')}")
        elif inspect.isfunction(target):
            call = signature_text(f"{name}.{member}", target).replace("(self, ", "(").replace("(self)", "()")
            if isinstance(value, classmethod):
                call = call.replace("(cls, ", "(").replace("(cls)", "()")
            rows.append(f"- `{call}`: {markdown_text(inspect.getdoc(target) or '')}")
    return ["", "**Methods**", "", *rows] if rows else []


def render_constant(name: str, value) -> list[str]:
    """The comment block above ``NAME = ...`` in its module, then the value."""
    module = importlib.import_module(importlib.import_module(PACKAGE)._EXPORTS[name])
    lines = Path(module.__file__).read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"{name}\b.*=", line))
    comment = []
    for line in reversed(lines[:start]):
        if not line.startswith("#"):
            break
        comment.insert(0, line.lstrip("# ").rstrip())
    text = re.sub(rf"^{name}:\s*", "", " ".join(comment)) or (module.__doc__ or "").strip().splitlines()[0]
    shown = pprint.pformat(value, sort_dicts=False, width=100)
    return [f"`{type(value).__name__}`: {markdown_text(text)}", "", "```python", f"{name} = {shown}", "```", ""]


def render() -> str:
    groups = export_groups()
    out = [HEADER.rstrip(), "", "## Contents", ""]
    for title, names in groups:
        out.append(f"- {title.capitalize()}: " + ", ".join(f"[`{n}`](#{n.lower()})" for n in names))
    for title, names in groups:
        out += ["", f"## {title.capitalize()}", ""]
        for name in names:
            out += render_name(name)
    return "\n".join(line.rstrip() for line in out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the page differs from what would be written")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="the page to write or check (default: docs/api.md)")
    args = parser.parse_args(argv)
    page = render()
    current = args.output.read_text(encoding="utf-8") if args.output.is_file() else None
    if args.check:
        if current != page:
            print(f"{args.output.name} is out of date with the docstrings; run python scripts/api_docs.py to regenerate it.")
            return 1
        return 0
    if current != page:
        args.output.write_text(page, encoding="utf-8", newline="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
