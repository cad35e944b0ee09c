"""YAML scope manifests -> validated ``Manifest`` objects, with errors a reviewer can act on.

Every problem becomes one issue line ``file:line: path: what was found, what was expected``,
and all problems in all files are collected before ``ManifestError`` is raised. Only
``yaml.safe_load`` constructs data; ``yaml.compose`` is used alongside it purely to map
document paths to line numbers and to catch duplicate keys, which PyYAML would otherwise
silently resolve to the last one (a reviewer would see one rule, the broker another).
"""

from __future__ import annotations

import reprlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from broker.core.errors import ManifestError
from broker.core.manifest import Manifest, Problems

M = TypeVar("M", bound=BaseModel)
MAX_FILE_BYTES = 1 << 20
DocPath = tuple[str, ...]
ALIAS_REFUSED = "YAML aliases (*name) are not allowed in manifests; write the value out"

_HINTS = {
    "accountable": "every action needs an accountable human (an email address); "
    "if nobody owns the decision, a bot may not execute it",
    "credential": "every action needs a credential: {kind: jwt|vault_token|dynamic, ...}",
}


def load_manifest(path: str | Path) -> Manifest:
    """Load and validate one manifest file, or raise ``ManifestError`` listing every issue."""
    model, issues = load_model(Path(path), Manifest)
    if model is None:
        raise ManifestError(f"{path}: manifest does not load ({len(issues)} issues)", issues)
    return model


def load_manifests(paths: Iterable[str | Path]) -> list[Manifest]:
    """Load every manifest in ``paths`` (files, or ``*.yaml``/``*.yml`` directly in dirs)."""
    files, issues = expand_paths(paths)
    loaded: list[tuple[Path, Manifest]] = []
    for file in files:
        model, file_issues = load_model(file, Manifest)
        issues += file_issues
        if model is not None:
            loaded.append((file, model))
    issues += list(_duplicate_agents(loaded))
    if not files and not issues:
        issues.append(f"no scope manifests (*.yaml, *.yml) found in {', '.join(map(str, paths))}")
    if issues:
        raise ManifestError(f"{len(issues)} problem(s) in scope manifests", issues)
    return [m for _, m in loaded]


def expand_paths(paths: Iterable[str | Path]) -> tuple[list[Path], list[str]]:
    """Files named directly, plus YAML files directly inside named directories."""
    files: list[Path] = []
    issues: list[str] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files += sorted(
                p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()
            )
        elif path.is_file():
            files.append(path)
        else:
            issues.append(f"{path}: no such file or directory")
    return files, issues


def _duplicate_agents(loaded: list[tuple[Path, Manifest]]) -> Iterator[str]:
    seen: dict[str, Path] = {}
    for file, manifest in loaded:
        first = seen.setdefault(manifest.agent, file)
        if first != file:
            yield f"{file}:1: agent: '{manifest.agent}' is already defined in {first}"


# -- one file ------------------------------------------------------------------------------


def load_model(path: Path, model: type[M]) -> tuple[M | None, list[str]]:
    """Parse ``path`` as YAML and validate it as ``model``; (result or None, issues)."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return None, [f"{path}:1: file is larger than {MAX_FILE_BYTES} bytes"]
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return None, [f"{path}: cannot read: {exc}"]
    return load_model_text(text, str(path), model)


def manifest_from_text(text: str, source: str) -> Manifest:
    """Validate YAML text held elsewhere (Vault) as a manifest; issues name ``source``."""
    if len(text.encode()) > MAX_FILE_BYTES:
        raise ManifestError(f"{source}: larger than {MAX_FILE_BYTES} bytes")
    model, issues = load_model_text(text, source, Manifest)
    if model is None:
        raise ManifestError(f"{source}: manifest does not load ({len(issues)} issues)", issues)
    return model


def load_model_text(text: str, path: str, model: type[M]) -> tuple[M | None, list[str]]:
    """``load_model`` for text already read; ``path`` only labels the issues."""
    try:
        lines, duplicates = _line_map(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return None, [_yaml_issue(path, exc)]
    issues = [f"{path}:{line}: {msg}" for line, msg in duplicates]
    if any(ALIAS_REFUSED in issue for issue in issues):
        return None, issues
    try:
        result = model.model_validate(data)
    except ValidationError as exc:
        return None, issues + list(_validation_issues(path, exc, lines))
    return (None if issues else result), issues


def _yaml_issue(path: Path | str, exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    line = mark.line + 1 if mark is not None else 1
    problem = getattr(exc, "problem", None) or str(exc)
    return f"{path}:{line}: malformed YAML: {problem}"


def _line_map(text: str) -> tuple[dict[DocPath, int], list[tuple[int, str]]]:
    """Line of every path in the document, and any duplicate keys found on the way."""
    lines: dict[DocPath, int] = {(): 1}
    issues: list[tuple[int, str]] = []
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is not None:
        _walk(root, (), lines, issues, set())
    return lines, issues


def _walk(
    node: yaml.Node,
    path: DocPath,
    lines: dict[DocPath, int],
    issues: list[tuple[int, str]],
    seen: set[int],
) -> None:
    # Aliases hide content from reviewers and allow "billion laughs" documents: refuse them.
    if id(node) in seen:
        where = ".".join(path) or "(document)"
        issues.append((node.start_mark.line + 1, f"{where}: {ALIAS_REFUSED}"))
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = (*path, str(key.value))
            line = key.start_mark.line + 1
            if child in lines:
                where = ".".join(child)
                issues.append((line, f"{where}: duplicate key (first at line {lines[child]})"))
                continue
            lines[child] = line
            _walk(value, child, lines, issues, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[(*path, str(i))] = item.start_mark.line + 1
            _walk(item, (*path, str(i)), lines, issues, seen)


# -- pydantic errors -> issue lines --------------------------------------------------------


def _validation_issues(
    path: Path | str, exc: ValidationError, lines: dict[DocPath, int]
) -> list[str]:
    grouped: dict[tuple[int, str], list[str]] = {}
    for err in exc.errors():
        for doc_path, line, message in _explain(err, lines):
            messages = grouped.setdefault((line, ".".join(doc_path) or "(document)"), [])
            if message not in messages:
                messages.append(message)
    return [f"{path}:{line}: {where}: {' or '.join(m)}" for (line, where), m in grouped.items()]


def _explain(err: Any, lines: dict[DocPath, int]) -> Iterator[tuple[DocPath, int, str]]:
    loc = tuple(str(part) for part in err["loc"])
    problems = err.get("ctx", {}).get("error")
    if isinstance(problems, Problems):
        base = _doc_path(loc, lines, keep_last=False)
        for sub, message in problems.issues:
            full = (*base, *sub)
            yield full, _line_of(full, lines), message
        return
    missing = err["type"] == "missing"
    doc_path = _doc_path(loc, lines, keep_last=missing)
    yield doc_path, _line_of(doc_path, lines), _message(err, missing)


def _doc_path(loc: DocPath, lines: dict[DocPath, int], *, keep_last: bool) -> DocPath:
    # pydantic adds union members and tags ("jwt", "function-after[...]") to loc; keep only
    # the parts that exist in the document, plus the missing field's name.
    path: DocPath = ()
    for i, part in enumerate(loc):
        if (*path, part) in lines or (keep_last and i == len(loc) - 1):
            path = (*path, part)
    return path


def _line_of(path: DocPath, lines: dict[DocPath, int]) -> int:
    while path not in lines:
        path = path[:-1]
    return lines[path]


def _message(err: Any, missing: bool) -> str:
    if missing:
        field = str(err["loc"][-1])
        return f"required field missing; {_HINTS.get(field, f'expected {field!r} here')}"
    if err["type"] == "extra_forbidden":
        return f"unknown key (found {_found(err['input'])}); not allowed here, see the schema"
    msg = str(err["msg"]).removeprefix("Value error, ")
    found = err.get("input")
    if isinstance(found, dict | list):
        return msg
    return f"{msg} (found {_found(found)})"


def _found(value: object) -> str:
    return _SHORT.repr(value)


_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 60
