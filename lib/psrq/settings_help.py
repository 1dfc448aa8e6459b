"""Each job's settings, generated from the configuration schema (psrq.config): the keys of the
sections a job reads, with their defaults and the schema's own comment on each, for `--help`;
and the merged configuration of those sections for `--show-config`."""
from __future__ import annotations

import inspect
import io
import re
import tokenize
from typing import get_args

from pydantic import BaseModel

from psrq.config import Config


def _comments(model: type[BaseModel]) -> dict[str, str]:
    """field -> the comment lines just above it and the comment on its own line, joined."""
    try:
        source = inspect.getsource(model)
    except (OSError, TypeError):
        return {}
    inline = {}  # line number -> its comment
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            inline[tok.start[0]] = tok.string.lstrip("#").strip()
    out, pending = {}, []
    for number, line in enumerate(source.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(inline.get(number, stripped.lstrip("#").strip()))
            continue
        field = re.match(r"\s*(\w+)\s*:", line)
        if field and field.group(1) in model.model_fields:
            out[field.group(1)] = " ".join([*pending, *([inline[number]] if number in inline else [])])
        pending = []
    return out


def keys(model: type[BaseModel], prefix: str) -> list[tuple[str, str, str]]:
    """(dotted key, default, meaning) of every setting under a section, nested ones too."""
    notes = _comments(model)
    out = []
    for name, field in model.model_fields.items():
        key = f"{prefix}.{name}"
        kind = field.annotation
        nested = next((t for t in (kind, *get_args(kind)) if inspect.isclass(t) and issubclass(t, BaseModel)), None)
        if nested is not None and not field.is_required() and isinstance(field.default, BaseModel):
            out += keys(nested, key)
            continue
        default = "(required)" if field.is_required() else repr(field.get_default(call_default_factory=True))
        out.append((key, default, notes.get(name, "")))
    return out


def describe(sections: tuple[str, ...]) -> str:
    """The keys of `sections`, one per line: key = default  meaning."""
    lines = []
    for section in sections:
        model = Config.model_fields[section].annotation
        assert inspect.isclass(model) and issubclass(model, BaseModel), section  # every section is a model
        for key, default, note in keys(model, section):
            lines.append(f"  {key} = {default}" + (f"  # {note}" if note else ""))
    return "\n".join(lines)
