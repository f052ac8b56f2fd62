"""Strict YAML and typed conversion for config files (pure: text in, data out).

Like ``yaml.safe_load`` but refuses what would otherwise be silently wrong or
crash later: duplicate keys (the last one would win), non-UTF-8 bytes,
pathologically deep nesting, and aliases (``*name``: a few nested ones expand to
billions of nodes, the "billion laughs" attack, and config files never need them).
Errors are ``ValueError`` with line/column.
"""

from __future__ import annotations

import difflib
import math
import re
from typing import Any, TypeVar
from urllib.parse import urlsplit

import msgspec
import msgspec.inspect
import yaml

T = TypeVar("T", bound=msgspec.Struct)

MAX_DEPTH = 50


class _StrictLoader(yaml.SafeLoader):
    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            mark = event.start_mark
            raise yaml.composer.ComposerError(
                None, None, f"aliases (*{event.anchor}) are not supported in config files: write the value out",
                mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, (str, int, float, bool, type(None))):  # [a]: 1, {a: 1}: x, !!set …
                mark = key_node.start_mark
                raise yaml.constructor.ConstructorError(
                    None, None, f"a key must be a plain value, not a {type(key).__name__}", mark)
            if key in seen:
                mark = key_node.start_mark
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (line {mark.line + 1}, column {mark.column + 1})", mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_DEPTH:
        return level
    if isinstance(value, dict):
        return max([_depth(v, level + 1) for v in value.values()] or [level + 1])
    if isinstance(value, list):
        return max([_depth(v, level + 1) for v in value] or [level + 1])
    return level


def load_yaml(data: bytes | str) -> Any:
    """Parse config YAML. Raises ``ValueError`` naming the line and column of the problem."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"not UTF-8 (byte {exc.start})") from None
    try:
        value = yaml.load(data, Loader=_StrictLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "invalid YAML"
        raise ValueError(f"YAML error{where}: {problem}") from None
    except (yaml.YAMLError, RecursionError):
        raise ValueError("YAML syntax error (or nesting too deep)") from None
    if _depth(value) > MAX_DEPTH:
        raise ValueError(f"nesting deeper than {MAX_DEPTH} levels")
    return value


class ConfigValueError(ValueError):
    """A value does not fit the config type: ``path`` (``$.cameras[0].rtsp_url``) and ``reason``."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def _unknown_keys(data: Any, info: Any, path: str) -> None:
    """Walk ``data`` along the msgspec type ``info`` (structs, lists, dicts, optionals)."""
    if isinstance(info, msgspec.inspect.UnionType):
        for member in info.types:
            _unknown_keys(data, member, path)
    elif isinstance(info, msgspec.inspect.StructType) and isinstance(data, dict):
        known = [f.encode_name for f in info.fields]
        for key in sorted((k for k in data if k not in known), key=str):
            if not isinstance(key, str):  # YAML 1.1 reads on/off/yes/no/null/1.5 unquoted as such
                what = "null" if key is None else f"the boolean {str(key).lower()}" if isinstance(key, bool) \
                    else f"the number {key!r}"
                raise ConfigValueError(f"{path}.{key!r}", f"unknown key: YAML read it as {what} (yes/no/on/off "
                                       "and null unquoted are not names); quote it if you meant the text")
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigValueError(f"{path}.{key}", f"unknown key{hint}")
        types = {f.encode_name: f.type for f in info.fields}
        for key, value in data.items():
            _unknown_keys(value, types[key], f"{path}.{key}")
    elif isinstance(info, msgspec.inspect.ListType) and isinstance(data, list):
        for i, item in enumerate(data):
            _unknown_keys(item, info.item_type, f"{path}[{i}]")
    elif isinstance(info, msgspec.inspect.DictType) and isinstance(data, dict):
        for key, value in data.items():
            _unknown_keys(value, info.value_type, f"{path}.{key}")


def check_known_keys(data: dict[str, Any], typ: type[msgspec.Struct]) -> None:
    """Refuse a key that ``typ`` (or a struct nested in it: ``cameras[0]``) does not have,
    before conversion, so the error names the key and its likely fix
    (``$.cameras[0].rtsp_urll: unknown key; did you mean 'rtsp_url'?``) instead of
    msgspec's ``Object contains unknown field``, and comes before a "required" error
    for the key it misspells. Raises :class:`ConfigValueError` for the first unknown key
    (sorted order, depth first)."""
    _unknown_keys(data, msgspec.inspect.type_info(typ), "$")


def _literal_values(info: Any, path: str) -> tuple[Any, ...]:
    """The values a ``Literal`` field at key path ``path`` ($.a.b[0].c) allows, or ()."""
    for part in re.findall(r"\.([^.\[]+)|\[\d+\]", path):
        while isinstance(info, (msgspec.inspect.UnionType, msgspec.inspect.ListType)):
            if isinstance(info, msgspec.inspect.ListType):
                info = info.item_type
            else:
                info = next((t for t in info.types if not isinstance(t, msgspec.inspect.NoneType)), None)
        if not part:  # a list index: its item type, unwrapped above
            continue
        if not isinstance(info, msgspec.inspect.StructType):
            return ()
        info = next((f.type for f in info.fields if f.encode_name == part), None)
    while isinstance(info, msgspec.inspect.UnionType):
        info = next((t for t in info.types if isinstance(t, msgspec.inspect.LiteralType)), None)
    return info.values if isinstance(info, msgspec.inspect.LiteralType) else ()


def convert_config(data: Any, typ: type[T]) -> T:
    """``msgspec.convert`` a decoded config mapping into the struct ``typ``, then refuse
    NaN and infinities in any float field (msgspec accepts them; a NaN timeout would
    silently disable a check). Raises :class:`ConfigValueError` naming the key path."""
    try:
        cfg = msgspec.convert(data, typ, strict=False)
    except msgspec.ValidationError as exc:
        msg = str(exc)
        if " - at `" in msg:
            reason, _, path = msg.rpartition(" - at `")
            path = path.rstrip("`")
            if path.startswith("key` in `"):  # a mapping's key, not its value, has the wrong type
                path, reason = path[len("key` in `"):], f"a key: {reason}"
            elif reason.startswith("Invalid enum value"):
                choices = _literal_values(msgspec.inspect.type_info(typ), path)
                if choices:
                    reason += f"; one of: {', '.join(map(str, choices))}"
            raise ConfigValueError(path, reason) from None
        raise ConfigValueError("$", msg) from None
    for name, value in msgspec.structs.asdict(cfg).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigValueError(f"$.{name}", "must be a finite number")
    return cfg


def http_url_problem(url: str, *, origin_only: bool = False) -> str | None:
    """Why ``url`` is not a usable ``http(s)://host[:port][/path]`` URL (RFC 3986), or None.

    Refuses spaces and control characters (``urlsplit`` would silently drop CR/LF/tab),
    a bad port, another scheme and a missing host; with ``origin_only`` also any path,
    query, fragment or credentials. Pure: the caller raises with its key path."""
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        return "must not contain spaces or control characters (CR, LF, tab)"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return "is not a valid URL (host or port)"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http(s)://host:port URL" if origin_only else "must be an http(s)://host[:port] URL"
    if origin_only and (parts.path not in ("", "/") or parts.query or parts.fragment or parts.username
                        or parts.password):
        return "must be scheme://host:port only (no path, query or credentials)"
    return None
