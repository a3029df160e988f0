"""Calling any served library: requests checked against the daemon's ``mytimerd.describe``.

A daemon may serve a library other than libmy_timer (``--library``,
``--schema``); its methods are not in the bundled tables. :class:`Described`
reads the describe answer (every map field named by its wire key, ``name``;
a type's own name is ``typeName``) and checks a request against it before it
is sent: an unknown method or key, or a value of the wrong type, is refused
in the client with the :class:`~.errors.DaemonCallError` the daemon would
answer (``UnknownMethod``, ``InvalidParameter``), its message saying that the
client checked. ``digest`` identifies the description (a cache key).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from .errors import DaemonCallError

#: What the client says it checked, in the errors it raises.
_CHECKED = "(checked by the client against mytimerd.describe)"


class Described:
    """The methods of a describe answer, for checking requests before they are sent."""

    def __init__(self, answer: Mapping[str, Any]) -> None:
        methods = answer.get("methods")
        entries = methods if isinstance(methods, list) else []
        #: Method name -> its request schema (the describe answer's form).
        self.methods: dict[str, Mapping[str, Any]] = {
            m["name"]: m.get("request") or {}
            for m in entries
            if isinstance(m, dict) and isinstance(m.get("name"), str)
        }
        canonical = json.dumps(
            {"methods": entries, "events": answer.get("events")}, sort_keys=True, default=repr
        )
        #: A digest of the methods and events described: the same for the same library.
        self.digest = hashlib.sha256(canonical.encode()).hexdigest()

    def check(self, method: str, request: object) -> None:
        """Raise the daemon's error for ``request`` to ``method`` if the description refuses it."""
        schema = self.methods.get(method)
        if schema is None:
            names = ", ".join(self.methods)
            raise DaemonCallError(
                method, "UnknownMethod", f"no method {method!r} (try: {names}) {_CHECKED}"
            )
        problem = _problem(schema, request, "")
        if problem is not None:
            raise DaemonCallError(method, "InvalidParameter", f"{problem} {_CHECKED}")


def _problem(schema: Mapping[str, Any], value: object, path: str) -> str | None:
    """What is wrong with ``value`` for ``schema`` (None: nothing), at ``path``."""
    where = path or "request"
    kind = schema.get("type")
    if kind == "map":
        if not isinstance(value, dict):
            return f"{where}: expected a map"
        fields = {f.get("name"): f for f in schema.get("fields", ()) if isinstance(f, dict)}
        for key, item in value.items():
            field = fields.get(key)
            if field is None:
                known = ", ".join(str(k) for k in fields) or "no keys"
                return f"{where}: unknown key {key!r} (it has: {known})"
            if item is None and field.get("optional"):
                continue
            problem = _problem(field, item, f"{path}.{key}" if path else str(key))
            if problem is not None:
                return problem
        return None
    if kind == "array":
        if not isinstance(value, list):
            return f"{where}: expected an array"
        items = schema.get("items") or {}
        for i, item in enumerate(value):
            problem = _problem(items, item, f"{where}[{i}]")
            if problem is not None:
                return problem
        return None
    expected = {"text": str, "bool": bool, "int": int}.get(str(kind))
    if expected is not None:
        # bool is an int in Python, not in CBOR
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            return f"{where}: expected {kind}, got {type(value).__name__}"
        return None
    if kind == "enum" and value not in schema.get("choices", ()):
        return f"{where}: expected one of {', '.join(map(str, schema.get('choices', ())))}"
    return None
