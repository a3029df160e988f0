"""The daemon's one configuration object: every option, built by the command
line and handed to the server; and the library constructor's request, built
from ``--config``/``--config-file`` values and checked like any request."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Literal

from ..protocol.address import Address
from ..protocol.errors import DaemonError
from ..protocol.interfaces import DEFAULT_LIBRARY, PROBE_METHODS
from ..protocol.limits import Limits
from ..protocol.record import Record, field
from ..protocol.schema import Enum, Field, Struct, Text

#: The timer's name when nothing names it (``--name``'s default).
DEFAULT_NAME: Final = "mytimerd"
#: Largest --config-file read.
MAX_CONFIG_FILE: Final = 1 << 20

SubmitMode = Literal["auto", "thread", "direct"]
EventLoop = Literal["uvloop", "asyncio"]
LogLevel = Literal["debug", "info", "warning", "error"]


class Config(Record):
    """Everything that shapes one run of mytimerd.

    ``library`` is the build to load (None: the bundled one); ``schema`` its
    interface description (None: the bundled one for its symbol generation);
    ``library_name`` the prefix of its symbols;
    ``constructor`` the request its context is created with, checked against
    the description; ``name`` the timer's name in it (``config.name``; None
    for a library whose constructor has none); ``probe_method`` the library
    method the liveness probe calls with ``{}``;
    ``addresses`` are bound only when systemd hands over no sockets;
    ``watchdog`` is the interval at which WATCHDOG=1 is sent (half of
    systemd's WatchdogSec=), None when systemd asked for no watchdog;
    ``fd_limit`` is the process's descriptor limit (RLIMIT_NOFILE), None for
    no limit: connections are refused before it is reached.
    ``socket_mode``/``socket_group`` apply to unix sockets the daemon binds;
    ``allow_uids``/``allow_gids``, when either is set, admit on unix sockets
    only those peers (and root and the daemon's own user).
    ``tls_cert``/``tls_key`` turn on TLS on every TCP listener;
    ``tls_client_ca`` requires client certificates signed by it, and
    ``tls_allow`` admits only those naming one of these names.
    """

    name: str | None = DEFAULT_NAME
    library: Path | None = None
    schema: Path | None = None
    library_name: str = DEFAULT_LIBRARY
    constructor: Mapping[str, Any] = field(
        default_factory=lambda: {"config": {"name": DEFAULT_NAME}}
    )
    probe_method: str = PROBE_METHODS[0]
    submit: SubmitMode = "auto"
    event_loop: EventLoop = "uvloop"
    log_level: LogLevel = "info"
    addresses: tuple[Address, ...] = ()
    limits: Limits = field(default_factory=Limits)
    watchdog: float | None = None
    fd_limit: int | None = None
    socket_mode: int = 0o660
    socket_group: int | None = None
    allow_uids: frozenset[int] = frozenset()
    allow_gids: frozenset[int] = frozenset()
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    tls_allow: frozenset[str] = frozenset()


def read_config_file(path: Path) -> dict[str, Any]:
    """The constructor's values from a TOML file (``.json``: JSON), a table
    shaped like the constructor's request; raise ValueError or OSError."""
    with open(path, "rb") as f:
        data = f.read(MAX_CONFIG_FILE + 1)
    if len(data) > MAX_CONFIG_FILE:
        raise ValueError(f"larger than {MAX_CONFIG_FILE} bytes")
    # Each parser is imported for its own kind of file only: a start without
    # --config-file needs neither, and their imports cost start-up time.
    parse: Callable[[str], Any]
    error: type[ValueError]
    if path.suffix == ".json":
        import json

        kind, parse, error = "JSON", json.loads, json.JSONDecodeError
    else:
        import tomllib

        kind, parse, error = "TOML", tomllib.loads, tomllib.TOMLDecodeError
    try:
        value = parse(data.decode("utf-8"))
    except (UnicodeDecodeError, error) as exc:
        raise ValueError(f"not valid {kind}: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError("must hold a table (a map) of the constructor's keys")
    return value


def _path(constructor: Struct, key: str) -> list[str]:
    """``key`` (dotted) as a path from the request's root: a key of the one
    map-typed parameter (``name`` for ``config.name``) may leave it out."""
    path = key.split(".")
    maps = [f for f in constructor.fields if isinstance(f.type, Struct)]
    if path[0] not in constructor.by_name and len(maps) == 1:
        path.insert(0, maps[0].name)
    return path


def _field(struct: Struct, path: list[str], i: int, key: str) -> Field:
    """The field ``path[i]`` of ``struct``, or ValueError naming what it has."""
    spec = struct.by_name.get(path[i])
    if spec is None:
        known = ", ".join(f.name for f in struct.fields) or "no keys"
        where = ".".join(path[:i]) or "the constructor's request"
        raise ValueError(f"{key}: {where} has no key {path[i]!r} (it has: {known})")
    return spec


def _set(request: dict[str, Any], constructor: Struct, key: str, text: str) -> None:
    """Set ``key`` to ``text``: text as is for a text or enum key, JSON
    otherwise (numbers, true/false, arrays, null)."""
    struct, target = constructor, request
    path = _path(constructor, key)
    for i, part in enumerate(path[:-1]):
        spec = _field(struct, path, i, key)
        if not isinstance(spec.type, Struct):
            raise ValueError(f"{key}: {'.'.join(path[: i + 1])} is not a map")
        struct = spec.type
        nested = target.setdefault(part, {})
        if not isinstance(nested, dict):
            raise ValueError(f"{key}: {'.'.join(path[: i + 1])} is already set to a non-map")
        target = nested
    spec = _field(struct, path, len(path) - 1, key)
    if isinstance(spec.type, Text | Enum):
        target[spec.name] = text
        return
    import json  # here, not at the top: a default start sets no such value

    try:
        target[spec.name] = json.loads(text)
    except json.JSONDecodeError:
        raise ValueError(f"{key}: {text!r} is not a JSON value") from None


def constructor_request(
    constructor: Struct,
    values: Mapping[str, Any],
    pairs: Sequence[str],
    name: str | None,
) -> dict[str, Any]:
    """The constructor's request: ``values`` (a --config-file), then each
    ``KEY=VALUE`` of ``pairs`` (--config), then ``name`` (--name) as
    ``config.name``; a constructor with a ``name`` key nobody set gets
    :data:`DEFAULT_NAME`. Checked like any request; raise ValueError."""
    request = _copy(values)
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{pair!r}: expected KEY=VALUE")
        _set(request, constructor, key, text)
    name_path = _path(constructor, "name")
    if name is not None:
        _set(request, constructor, "name", name)
    elif _has(constructor, name_path) and _lookup(request, name_path) is None:
        _set(request, constructor, "name", DEFAULT_NAME)
    try:
        constructor.check(request, "")
    except DaemonError as exc:
        raise ValueError(exc.message) from None
    return request


def _copy(values: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of a --config-file's values, through JSON."""
    if not values:  # a start without --config-file: no need to import json
        return {}
    import json

    copy: dict[str, Any] = json.loads(json.dumps(values))
    return copy


def _has(struct: Struct, path: list[str]) -> bool:
    """Whether ``struct`` has the key at ``path``."""
    for part in path[:-1]:
        spec = struct.by_name.get(part)
        if spec is None or not isinstance(spec.type, Struct):
            return False
        struct = spec.type
    return path[-1] in struct.by_name


def _lookup(request: Mapping[str, Any], path: list[str]) -> Any:
    """The value at ``path`` in ``request``; None if absent."""
    value: Any = request
    for part in path:
        value = value.get(part) if isinstance(value, dict) else None
    return value


def timer_name(request: Mapping[str, Any], constructor: Struct) -> str | None:
    """The timer's name (``config.name``) a constructor request holds; None
    when it holds none (another library's)."""
    value = _lookup(request, _path(constructor, "name"))
    return value if isinstance(value, str) else None
