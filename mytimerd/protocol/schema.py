"""The method table: every method's name, documentation and schemas, once.

This table drives request validation in the daemon, ``mytimerd.describe``, the
commands and options of ``mytimerctl`` and the method list in the README.
Validation mirrors the library's decoder where that is safe (every key may be
missing and then takes the library's zero value; unknown keys are refused) and
is stricter where the library is not safe (types are exact, integers must fit
int64, a delay must fit the library's millisecond clock).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from . import cbor
from .errors import DaemonError

INT64_MIN: Final = -(1 << 63)
INT64_MAX: Final = (1 << 63) - 1

#: Largest |delayMs| accepted (about 31.7 years). The real library's clock
#: overflows, and aborts the whole process, near 9.2e12 ms.
DELAY_MS_LIMIT: Final = 10**12

JSONValue = Any


class Type:
    """A value type in a schema."""

    def check(self, value: object, path: str) -> None:
        """Raise InvalidParameter if ``value`` does not have this type."""
        raise NotImplementedError

    def to_json(self) -> dict[str, JSONValue]:
        """A JSON-able description (served by mytimerd.describe)."""
        raise NotImplementedError

    def cddl(self) -> str:
        """The type in CDDL notation, for documentation."""
        raise NotImplementedError


def invalid(path: str, message: str) -> DaemonError:
    """An InvalidParameter error for the value at ``path``."""
    return DaemonError("InvalidParameter", f"{path}: {message}")


def _got(value: object) -> str:
    return f"got {cbor.type_name(value)}"


@dataclass(frozen=True)
class Text(Type):
    """A UTF-8 text string."""

    def check(self, value: object, path: str) -> None:
        if type(value) is not str:
            raise invalid(path, f"expected a text string, {_got(value)}")

    def to_json(self) -> dict[str, JSONValue]:
        return {"type": "text"}

    def cddl(self) -> str:
        return "tstr"


@dataclass(frozen=True)
class Bool(Type):
    """true or false."""

    def check(self, value: object, path: str) -> None:
        if type(value) is not bool:
            raise invalid(path, f"expected a boolean, {_got(value)}")

    def to_json(self) -> dict[str, JSONValue]:
        return {"type": "bool"}

    def cddl(self) -> str:
        return "bool"


@dataclass(frozen=True)
class Int(Type):
    """An integer within [lo, hi] (int64 unless narrowed)."""

    lo: int = INT64_MIN
    hi: int = INT64_MAX

    def check(self, value: object, path: str) -> None:
        if type(value) is not int:
            raise invalid(path, f"expected an integer, {_got(value)}")
        if not self.lo <= value <= self.hi:
            raise invalid(path, f"{value} is out of range [{self.lo}, {self.hi}]")

    def to_json(self) -> dict[str, JSONValue]:
        return {"type": "int", "min": self.lo, "max": self.hi}

    def cddl(self) -> str:
        return "int"


@dataclass(frozen=True)
class Array(Type):
    """A definite-length array of one item type."""

    item: Type

    def check(self, value: object, path: str) -> None:
        if type(value) is not list:
            raise invalid(path, f"expected an array, {_got(value)}")
        for i, element in enumerate(value):
            self.item.check(element, f"{path}[{i}]")

    def to_json(self) -> dict[str, JSONValue]:
        return {"type": "array", "items": self.item.to_json()}

    def cddl(self) -> str:
        return f"[* {self.item.cddl()}]"


@dataclass(frozen=True)
class Any_(Type):
    """Any value (daemon responses whose shape is documented in prose)."""

    def check(self, value: object, path: str) -> None:
        return None

    def to_json(self) -> dict[str, JSONValue]:
        return {"type": "any"}

    def cddl(self) -> str:
        return "any"


@dataclass(frozen=True)
class Field:
    """One key of a map.

    ``option`` marks the library's optional values (``? key: T / null``): null
    or undefined mean "absent". Every key may be left out; the library then
    uses ``default``. ``cli`` overrides the mytimerctl option name.
    """

    name: str
    type: Type
    doc: str
    default: JSONValue = None
    option: bool = False
    cli: str | None = None


@dataclass(frozen=True)
class Struct(Type):
    """A map with known text keys."""

    name: str
    fields: tuple[Field, ...]
    doc: str = ""
    by_name: Mapping[str, Field] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {f.name: f for f in self.fields})

    def check(self, value: object, path: str) -> None:
        if type(value) is not dict:
            raise invalid(path or "request", f"expected a map ({self.name}), {_got(value)}")
        prefix = f"{path}." if path else ""
        for key, item in value.items():
            spec = self.by_name.get(key)
            if spec is None:
                known = ", ".join(f.name for f in self.fields) or "no keys"
                raise invalid(path or "request", f"unknown key {key!r} ({self.name} has: {known})")
            if item is None or item is cbor.UNDEFINED:
                if spec.option:
                    continue
                raise invalid(prefix + key, f"{_got(item)[4:]} is not allowed here (not optional)")
            spec.type.check(item, prefix + key)

    def to_json(self) -> dict[str, JSONValue]:
        return {
            "type": "map",
            "name": self.name,
            "doc": self.doc,
            "fields": [
                {
                    "name": f.name,
                    "doc": f.doc,
                    "optional": f.option,
                    "default": f.default,
                    **f.type.to_json(),
                }
                for f in self.fields
            ],
        }

    def cddl(self) -> str:
        return self.name

    def cddl_rule(self) -> str:
        """``Name = { key: type, ? opt: type / null }``."""
        parts = [
            f"{'? ' if f.option else ''}{f.name}: {f.type.cddl()}{' / null' if f.option else ''}"
            for f in self.fields
        ]
        return f"{self.name} = {{ {', '.join(parts)} }}"


Check = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Method:
    """One callable method.

    ``library`` methods go to ``my_timer_<name>_cbor``; the others are answered
    by the daemon. ``example`` is a request used in help texts.
    """

    name: str
    doc: str
    request: Struct
    response: Type
    library: bool
    example: dict[str, JSONValue] = field(default_factory=dict)
    checks: tuple[Check, ...] = ()

    def validate(self, payload: bytes, max_items: int = cbor.MAX_ITEMS) -> None:
        """Raise DaemonError unless ``payload`` is an acceptable request of at
        most ``max_items`` CBOR data items."""
        if payload == b"\xa0":  # `{}`: every key may be missing
            return
        try:
            value = cbor.loads(payload, max_items)
        except cbor.CBORError as exc:
            raise DaemonError("InvalidCBOR", str(exc)) from None
        self.request.check(value, "")
        assert isinstance(value, dict)
        for check in self.checks:
            check(value)

    def to_json(self) -> dict[str, JSONValue]:
        """A JSON-able description (served by mytimerd.describe)."""
        return {
            "name": self.name,
            "doc": self.doc,
            "handler": "library" if self.library else "daemon",
            "request": self.request.to_json(),
            "response": self.response.to_json(),
            "example": self.example,
        }


# --- the library's types -------------------------------------------------

ECHO_REQUEST: Final = Struct(
    "EchoRequest",
    (
        Field("message", Text(), "Text to echo back.", default=""),
        Field(
            "delayMs",
            Int(-DELAY_MS_LIMIT, DELAY_MS_LIMIT),
            "Milliseconds to wait before replying (<= 0: reply at once).",
            default=0,
            cli="delay-ms",
        ),
    ),
    "One echo.",
)

COMPLEX_REQUEST: Final = Struct(
    "ComplexRequest",
    (
        Field(
            "messages",
            Array(ECHO_REQUEST),
            "Messages to count (delays are ignored).",
            [],
            cli="message",
        ),
        Field("tags", Array(Text()), "Free-form tags.", [], cli="tag"),
        Field("note", Text(), "A note; an empty string counts as present.", option=True),
        Field("retries", Int(), "Reported back in the summary.", option=True),
    ),
    "A request with nested and optional values.",
)

JOB_SPEC: Final = Struct(
    "JobSpec",
    (
        Field("name", Text(), "Job name (must not be empty).", "", cli="job"),
        Field("payload", Array(Text()), "Job arguments.", []),
        Field("priority", Int(), "Job priority.", 0),
    ),
)

RETRY_POLICY: Final = Struct(
    "RetryPolicy",
    (
        Field("maxAttempts", Int(), "Attempts allowed (must be positive).", 0),
        Field("backoffMs", Int(), "Milliseconds between attempts.", 0),
        Field("retryOn", Array(Text()), "Conditions that trigger a retry.", []),
    ),
)

SCHEDULE_CONFIG: Final = Struct(
    "ScheduleConfig",
    (
        Field("startAtMs", Int(), "First run, in ms.", 0),
        Field("intervalMs", Int(), "Period in ms (<= 0: runs once).", 0),
        Field("jitter", Int(), "Added to startAtMs.", option=True),
    ),
)


def _schedule_sum_fits(value: dict[str, Any]) -> None:
    """startAtMs + jitter must fit int64: the real library aborts otherwise."""
    sched = value.get("schedule")
    if not isinstance(sched, dict):
        return
    start = sched.get("startAtMs") or 0
    jitter = sched.get("jitter")
    if isinstance(jitter, int) and not INT64_MIN <= start + jitter <= INT64_MAX:
        raise invalid(
            "schedule.jitter",
            f"startAtMs + jitter = {start + jitter} does not fit a 64-bit integer",
        )


ECHO_RESPONSE: Final = Struct(
    "EchoResponse",
    (
        Field("echoed", Text(), "The message."),
        Field("timerName", Text(), "The daemon's timer name (--name)."),
    ),
)
COMPLEX_RESPONSE: Final = Struct(
    "ComplexResponse",
    (
        Field("summary", Text(), "One-line summary."),
        Field("itemCount", Int(), "Number of messages."),
        Field("hasNote", Bool(), "Whether a note was given."),
    ),
)
SCHEDULE_RESPONSE: Final = Struct(
    "ScheduleResponse",
    (
        Field("jobId", Text(), "<timer name>:<job name>."),
        Field("willRunCount", Int(), "Runs in the next minute."),
        Field("firstRunAtMs", Int(), "startAtMs + jitter."),
        Field("effectiveBackoffMs", Int(), "retry.backoffMs."),
    ),
)

EMPTY: Final = Struct("Empty", (), "No parameters: send an empty map (a0).")

# --- the table -------------------------------------------------------------

METHODS: Final[tuple[Method, ...]] = (
    Method(
        "version",
        "The library's version string.",
        EMPTY,
        Text(),
        library=True,
    ),
    Method(
        "echo",
        "Echo a message back after an optional delay; fires the on_echo_fired event.",
        Struct("echo-request", (Field("req", ECHO_REQUEST, "The echo."),)),
        ECHO_RESPONSE,
        library=True,
        example={"req": {"message": "hello", "delayMs": 0}},
    ),
    Method(
        "complex",
        "Summarise a list of messages, tags and optional values.",
        Struct("complex-request", (Field("req", COMPLEX_REQUEST, "The request."),)),
        COMPLEX_RESPONSE,
        library=True,
        example={"req": {"messages": [{"message": "a", "delayMs": 0}], "tags": ["t"]}},
    ),
    Method(
        "schedule",
        "Plan a job: its id, runs per minute, first run and backoff.",
        Struct(
            "schedule-request",
            (
                Field("job", JOB_SPEC, "The job."),
                Field("retry", RETRY_POLICY, "Its retry policy."),
                Field("schedule", SCHEDULE_CONFIG, "When it runs."),
            ),
        ),
        SCHEDULE_RESPONSE,
        library=True,
        example={
            "job": {"name": "backup", "payload": [], "priority": 1},
            "retry": {"maxAttempts": 3, "backoffMs": 100, "retryOn": ["timeout"]},
            "schedule": {"startAtMs": 1000, "intervalMs": 250},
        },
        checks=(_schedule_sum_fits,),
    ),
    Method(
        "mytimerd.describe",
        "The daemon and library versions, the timer name, every method with its "
        "request and response schema, the limits and the error names.",
        EMPTY,
        Any_(),
        library=False,
    ),
    Method(
        "mytimerd.ping",
        "Health: whether the library answers its liveness probe in time.",
        EMPTY,
        Any_(),
        library=False,
    ),
    Method(
        "mytimerd.stats",
        "Uptime, connections, calls and errors by method and name, calls in "
        "flight and latency percentiles.",
        EMPTY,
        Any_(),
        library=False,
    ),
)

BY_NAME: Final[dict[bytes, Method]] = {m.name.encode(): m for m in METHODS}
LIBRARY_METHODS: Final = tuple(m for m in METHODS if m.library)


def lookup(name: bytes) -> Method:
    """The method called ``name``, or DaemonError UnknownMethod."""
    method = BY_NAME.get(name)
    if method is None:
        shown = name.decode("utf-8", "backslashreplace")
        names = ", ".join(m.name for m in METHODS)
        raise DaemonError("UnknownMethod", f"no method {shown!r} (try: {names})")
    return method
