"""A griffe extension for the docs: the signature of each attrs class.

attrs writes a class's ``__init__`` when the class is made, so the source griffe reads
has none, and mkdocstrings would show ``JobSpec`` without its parameters. This adds
the ``__init__`` attrs really generates, read from ``attrs.fields`` of the imported
class (aliases, keyword-only fields, ``init=False`` fields and defaults as attrs has
them), with each parameter's annotation as the source writes the field's.

mkdocs.yml loads it (``extensions: [docs/griffe_attrs.py]``); it is not part of the
package.
"""

from __future__ import annotations

import enum
import importlib
from typing import Any

import attrs
import griffe

_SHOWN_BY_VALUE = (dict, list, tuple, set, frozenset)


def _default(field: attrs.Attribute[Any]) -> str | None:
    default = field.default
    if default is attrs.NOTHING:
        return None  # required
    if isinstance(default, enum.Enum):
        return f"{type(default).__name__}.{default.name}"
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        factory = default.factory
        if not default.takes_self and factory in _SHOWN_BY_VALUE:
            return repr(factory())
        return f"{getattr(factory, '__name__', 'factory')}()"
    return repr(default)


def _runtime(cls: griffe.Class) -> object | None:
    module = cls.module.path
    try:
        obj: object = importlib.import_module(module)
    except ImportError:
        return None
    for part in cls.path[len(module) + 1 :].split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _add_init(cls: griffe.Class) -> None:
    obj = _runtime(cls)
    if not isinstance(obj, type) or not attrs.has(obj):
        return
    parameters = [
        griffe.Parameter("self", kind=griffe.ParameterKind.positional_or_keyword)
    ]
    for field in attrs.fields(obj):
        if not field.init:
            continue
        member = cls.members.get(field.name)
        annotation = getattr(member, "annotation", None) if member is not None else None
        if annotation is None and field.type is not None:
            annotation = field.type if isinstance(field.type, str) else repr(field.type)
        parameters.append(
            griffe.Parameter(
                field.alias or field.name,
                annotation=annotation,
                kind=griffe.ParameterKind.keyword_only
                if field.kw_only
                else griffe.ParameterKind.positional_or_keyword,
                default=_default(field),
            )
        )
    init = griffe.Function(
        "__init__",
        lineno=0,
        endlineno=0,
        parent=cls,
        parameters=griffe.Parameters(*parameters),
        returns="None",
    )
    cls.set_member("__init__", init)


def _walk(obj: griffe.Module | griffe.Class, seen: set[str]) -> None:
    if obj.path in seen:
        return
    seen.add(obj.path)
    if isinstance(obj, griffe.Class) and "__init__" not in obj.members:
        _add_init(obj)
    for member in obj.members.values():
        if not member.is_alias and (member.is_module or member.is_class):
            _walk(member, seen)  # type: ignore[arg-type]


class AttrsInit(griffe.Extension):
    """Gives every attrs class the ``__init__`` that attrs generates for it."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        _walk(pkg, set())
