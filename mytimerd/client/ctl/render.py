"""Answers as mytimerctl prints them: JSON forms of CBOR values, and renderings for humans."""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import cbor2

from ...protocol.errors import PREFIX

# --- JSON forms -------------------------------------------------------------


def to_json(value: Any) -> Any:
    """``value`` (as cbor2 decodes it) in a form ``json.dumps`` accepts.

    JSON has no form for some CBOR values; they become one-key objects:
    bytes ``{"$bytes": "<base64>"}``, non-finite floats ``{"$float": "nan"}``,
    maps with non-text keys ``{"$map": [[key, value], ...]}``, tags
    ``{"$tag": N, "value": ...}``, undefined ``{"$undefined": true}``,
    simple values ``{"$simple": N}``, anything else ``{"$repr": "..."}``.
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$float": str(value)}
    if isinstance(value, bytes | bytearray):
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    if isinstance(value, dict):
        if all(isinstance(key, str) for key in value):
            return {key: to_json(item) for key, item in value.items()}
        return {"$map": [[to_json(k), to_json(v)] for k, v in value.items()]}
    if isinstance(value, cbor2.CBORTag):
        return {"$tag": value.tag, "value": to_json(value.value)}
    if value is cbor2.undefined:
        return {"$undefined": True}
    if isinstance(value, cbor2.CBORSimpleValue):
        return {"$simple": value.value}
    return {"$repr": repr(value)}


def _from_json_object(pairs: list[tuple[str, Any]]) -> Any:
    """The inverse of ``{"$bytes": ...}`` for requests given as JSON."""
    if len(pairs) == 1 and pairs[0][0] == "$bytes" and isinstance(pairs[0][1], str):
        return base64.b64decode(pairs[0][1], validate=True)
    return dict(pairs)


def parse_json_request(text: str) -> Any:
    """The request given to ``call`` as JSON; raises ValueError if it is not JSON."""
    try:
        return json.loads(text, object_pairs_hook=_from_json_object)
    except json.JSONDecodeError as exc:
        raise ValueError(f"the request is not valid JSON: {exc}") from None
    except ValueError as exc:  # binascii.Error from a bad $bytes
        raise ValueError(f'bad {{"$bytes": ...}} in the request: {exc}') from None


# --- human-readable output --------------------------------------------------

#: What human output escapes: the control characters (C0, DEL and C1; terminal
#: escape sequences start with ESC or CSI), the line and paragraph separators,
#: and the bidirectional overrides and isolates, which reorder what a terminal
#: shows.
_UNSAFE: Final = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")

_ESCAPES: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(char: str) -> str:
    if char in _ESCAPES:
        return _ESCAPES[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """``text`` with control characters written as escapes (``\\x1b``, ``\\n``).

    Text from the library or the daemon could otherwise move the cursor,
    recolour or retitle the terminal, or forge output lines. Backslashes are
    kept as they are, so the escapes are for reading: ``--json`` gives the
    exact text.
    """
    return _UNSAFE.sub(lambda match: _escape_char(match.group()), text)


def _escaped(value: Any) -> Any:
    """``value`` with every text in it (keys too) passed through :func:`escape_controls`."""
    if isinstance(value, str):
        return escape_controls(value)
    if isinstance(value, list | tuple):
        return [_escaped(item) for item in value]
    if isinstance(value, dict):
        return {_escaped(key): _escaped(item) for key, item in value.items()}
    return value


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "-"
    if isinstance(value, bytes | bytearray):
        return f"<{len(value)} bytes: {bytes(value).hex()}>"
    if isinstance(value, str):
        return value
    return json.dumps(to_json(value), ensure_ascii=False)


def _generic(value: Any, indent: int = 0) -> list[str]:
    """An indented outline of any answer: maps as aligned ``key: value``, lists as bullets."""
    pad = " " * indent
    if isinstance(value, dict) and value:
        width = max(len(str(key)) for key in value) + 1
        lines = []
        for key, item in value.items():
            if isinstance(item, dict | list) and item:
                lines.append(f"{pad}{key}:")
                lines += _generic(item, indent + 2)
            else:
                lines.append(f"{pad}{f'{key}:':<{width}} {_scalar(item)}")
        return lines
    if isinstance(value, list) and value:
        lines = []
        for item in value:
            inner = _generic(item, indent + 2)
            lines.append(f"{pad}- {inner[0].lstrip()}")
            lines += inner[1:]
        return lines
    return [pad + _scalar(value)]


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours:02d}h {minutes:02d}m"
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    return f"{minutes}m {secs:02d}s"


def _rest(answer: Mapping[str, Any], shown: Sequence[str]) -> list[str]:
    """Keys a renderer does not know (a newer daemon's), shown generically."""
    extra = {k: v for k, v in answer.items() if k not in shown}
    return _generic(extra) if extra else []


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        return "  ".join(cells).rstrip()

    return [line(header)] + [line(row) for row in rows]


def _error_name(name: str) -> str:
    """``mytimerd.<Name>`` whether or not the daemon's key carries the prefix."""
    return name if name.startswith(PREFIX) else PREFIX + name


def _render_describe(answer: Mapping[str, Any]) -> list[str]:
    daemon = answer.get("daemon") or {}
    library = answer.get("library") or {}
    lines = [
        f"daemon:     {daemon.get('name', '?')} {daemon.get('version', '?')}",
        f"library:    {library.get('path', '?')} ({library.get('version') or 'version unknown'})",
        f"timer name: {answer.get('timerName', '?')}",
    ]
    limits = answer.get("limits") or {}
    if limits:
        lines.append("limits:")
        lines += _generic(limits, 2)
    methods = answer.get("methods") or []
    if methods:
        lines.append("methods:")
        width = max(len(str(m.get("name", ""))) for m in methods)
        for m in methods:
            tag = f"[{m.get('handler', '?')}]"
            lines.append(f"  {m.get('name', '?'):<{width}}  {tag:<9} {m.get('doc', '')}")
    errors = answer.get("errors") or {}
    if errors:
        lines.append("errors:")
        width = max(len(_error_name(name)) for name in errors)
        lines += [f"  {_error_name(name):<{width}}  {doc}" for name, doc in errors.items()]
    return lines + _rest(answer, ("daemon", "library", "timerName", "limits", "methods", "errors"))


def _render_ping(answer: Mapping[str, Any]) -> list[str]:
    library = answer.get("library") or {}
    probe = library.get("lastProbeAgoSeconds")
    lines = [
        f"healthy: {_scalar(answer.get('healthy'))} ({answer.get('status', '?')})",
        f"uptime:  {_duration(answer.get('uptimeSeconds'))}",
        "library: "
        + ", ".join(
            (
                f"last probe {'never' if probe is None else _duration(probe) + ' ago'}",
                f"submit blocked {_duration(library.get('submitBlockedSeconds'))}",
                f"{library.get('inFlight', '?')} calls in flight",
            )
        ),
    ]
    known = ("lastProbeAgoSeconds", "submitBlockedSeconds", "inFlight")
    lines += [f"  {line}" for line in _rest(library, known)]
    return lines + _rest(answer, ("healthy", "status", "uptimeSeconds", "library"))


def _render_stats(answer: Mapping[str, Any]) -> list[str]:
    conns = answer.get("connections") or {}
    lines = [
        f"uptime:      {_duration(answer.get('uptimeSeconds'))}",
        f"connections: {conns.get('open', '?')} open, {conns.get('total', '?')} total, "
        f"{conns.get('refused', '?')} refused",
        f"in flight:   {answer.get('inFlight', '?')}",
    ]
    calls = answer.get("calls") or {}
    latency = answer.get("latencyMs") or {}
    names = list(calls) + [m for m in latency if m not in calls]
    if names:

        def ms(stat: Mapping[str, Any], key: str) -> str:
            value = stat.get(key)
            return f"{value:.2f}" if isinstance(value, int | float) else "-"

        rows = []
        for name in names:
            count = calls.get(name) or {}
            lat = latency.get(name) or {}
            rows.append(
                [
                    name,
                    str(count.get("ok", 0)),
                    str(count.get("libraryErrors", 0)),
                    str(count.get("daemonErrors", 0)),
                    *(ms(lat, key) for key in ("p50", "p90", "p99", "max")),
                ]
            )
        header = ["method", "ok", "lib err", "daemon err", "p50 ms", "p90 ms", "p99 ms", "max ms"]
        lines += ["", *_table(header, rows)]
    errors = answer.get("errors") or {}
    if errors:
        lines += ["", "errors:"]
        width = max(len(_error_name(name)) for name in errors)
        lines += [f"  {_error_name(name):<{width}}  {count}" for name, count in errors.items()]
    return lines + _rest(
        answer, ("uptimeSeconds", "connections", "inFlight", "calls", "latencyMs", "errors")
    )


_RENDERERS: Final[Mapping[str, Callable[[Mapping[str, Any]], list[str]]]] = {
    "mytimerd.describe": _render_describe,
    "mytimerd.ping": _render_ping,
    "mytimerd.stats": _render_stats,
}


#: A JSON escape of a C0 control or DEL (``\u001b``), not itself escaped (``\\u001b``).
_JSON_CONTROL: Final = re.compile(r"(?<!\\)((?:\\\\)*)\\u00([01][0-9a-f]|7f)")


def render_event(name: str, payload: Any) -> str:
    """One event on one line for humans: its name, then its payload as compact JSON.

    Control characters are escaped as in other human output (``\x1b``, and
    JSON's ``\n``), whatever the library put in the payload.
    """
    shown = json.dumps(to_json(payload), ensure_ascii=False, separators=(", ", ": "))
    shown = _JSON_CONTROL.sub(lambda m: f"{m[1]}\\x{m[2]}", shown)
    return escape_controls(f"{name} {shown}")


def render(method: str, answer: Any) -> str:
    """The answer to ``method`` for humans, control characters escaped."""
    answer = _escaped(answer)
    renderer = _RENDERERS.get(method)
    if renderer is not None and isinstance(answer, dict):
        try:
            return "\n".join(renderer(answer))
        except (AttributeError, TypeError, ValueError):
            pass  # not the shape this version knows: fall back to the outline below
    return "\n".join(_generic(answer))
