"""The typed methods of both clients: their requests, their answers, and one definition of each.

The request builders (:func:`echo_request`, ...) make the request maps without
sending them; the TypedDicts type the answers. :class:`TypedMethods` declares
each typed method once, as a :class:`TypedCall`, for :class:`~.blocking.Client`
and :class:`~.aio.AsyncClient` alike: on a Client it is a plain method, on an
AsyncClient a coroutine method, and both go through the client's ``call``.
Every typed method takes a keyword-only ``timeout=`` that it hands to ``call``.
"""

from __future__ import annotations

import functools
import inspect
import re
import types
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from ssl import SSLContext, create_default_context
from typing import (
    TYPE_CHECKING,
    Any,
    Final,
    Generic,
    Literal,
    NotRequired,
    ParamSpec,
    Protocol,
    Self,
    TypedDict,
    TypeVar,
    overload,
)

from ..protocol import interfaces
from ..protocol.address import Address, TcpAddress, UnixAddress
from ..protocol.record import replace
from ..protocol.schema import Array, Field, Method, Struct, Type
from .common import (
    CLIENT_TIMEOUT,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_TIMEOUT,
    NO_REQUEST,
    Addresses,
    Timeout,
    check_timeout,
    resolve_addresses,
)
from .core import Dialer
from .described import Described
from .errors import BadResponse, CallError
from .tls import check_context

if TYPE_CHECKING:  # only for the overloads of TypedCall.__get__: both clients import this module
    from .aio import AsyncClient
    from .blocking import Client

P = ParamSpec("P")
T = TypeVar("T")


# --- answers ------------------------------------------------------------------


class EchoResult(TypedDict):
    """The answer of ``echo``."""

    echoed: str
    timerName: str


class ComplexResult(TypedDict):
    """The answer of ``complex``."""

    summary: str
    itemCount: int
    hasNote: bool


class ScheduleResult(TypedDict):
    """The answer of ``schedule``."""

    jobId: str
    willRunCount: int
    firstRunAtMs: int
    effectiveBackoffMs: int
    #: 0.3 libraries only: the job's priority.
    priority: NotRequired[str]


# --- requests, built from the method table -----------------------------------

#: The bundled generations whose tables the requests follow, newest first: a
#: method only a newer generation has (lib_version) is found there. The paths
#: of the fields both have are the same in both.
TABLE_GENERATIONS: Final = ("0.3", "0.2")

#: ``priority`` of ``schedule``: an integer for 0.2 libraries, one of these for 0.3.
Priority = int | Literal["low", "normal", "high"]


def table_method(name: str) -> Method:
    """The method ``name`` of the newest bundled table that has it; LookupError if none has."""
    for generation in TABLE_GENERATIONS:
        method = interfaces.bundled(generation).by_name.get(name.encode())
        if method is not None:
            return method
    raise LookupError(f"no bundled library generation has a method {name!r}")


def _snake(name: str) -> str:
    """``maxAttempts`` -> ``max_attempts``."""
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def _leaves(struct: Struct, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Field]]:
    out: list[tuple[tuple[str, ...], Field]] = []
    for field in struct.fields:
        if isinstance(field.type, Struct) and field.type.fields and field.type is not struct:
            out += _leaves(field.type, (*path, field.name))
        else:
            out.append(((*path, field.name), field))
    return out


def _value(kind: Type, value: object) -> object:
    """``value`` as the request holds it: sequences as lists; in an array of maps, a
    text as the map whose first field it is (complex's ``messages``)."""
    if not isinstance(kind, Array) or isinstance(value, str | bytes | Mapping):
        return value
    if not isinstance(value, Iterable):
        return value  # the daemon says what is wrong with it
    item = kind.item
    if isinstance(item, Struct) and item.fields:
        first = item.fields[0].name
        return [{first: v} if isinstance(v, str) else dict(v) for v in value]
    return list(value)


class RequestShape:
    """How a typed method's arguments become its request map, from the method table.

    Each argument is one leaf field of the request: the one whose name, in
    snake_case, is the argument's (``max_attempts`` -> ``retry.maxAttempts``),
    or the dotted path ``paths`` gives it (``job`` -> ``job.name``). The
    request has the table's nesting and key order; an argument that is None
    is left out, and so is a sub-map no argument fills: the library's
    defaults apply. Resolved against the table on first use.
    """

    def __init__(
        self, method: str, names: Sequence[str], paths: Mapping[str, str] | None = None
    ) -> None:
        self.method = method
        self.names = tuple(names)
        self.paths = dict(paths or {})

    @functools.cached_property
    def leaves(self) -> tuple[tuple[str, tuple[str, ...], Type], ...]:
        """(argument, path, type) in the table's order; LookupError if an argument has no field."""
        table = _leaves(table_method(self.method).request)
        found = {}
        for name in self.names:
            dotted = self.paths.get(name)
            matches = [
                (path, field)
                for path, field in table
                if (".".join(path) == dotted if dotted else _snake(field.name) == name)
            ]
            if len(matches) != 1:
                raise LookupError(
                    f"{self.method}: argument {name!r} matches {len(matches)} request fields"
                )
            found[matches[0][0]] = (name, matches[0][1].type)
        return tuple((found[p][0], p, found[p][1]) for p, _ in table if p in found)

    def build(self, values: Mapping[str, object]) -> dict[str, object]:
        """The request map for the arguments ``values`` (None: left out)."""
        request: dict[str, object] = {}
        for name, path, kind in self.leaves:
            value = values.get(name)
            if value is None:
                continue
            node = request
            for key in path[:-1]:
                child = node.setdefault(key, {})
                assert isinstance(child, dict)
                node = child
            node[path[-1]] = _value(kind, value)
        return request


_ECHO: Final = RequestShape("echo", ("message", "delay_ms"))
_COMPLEX: Final = RequestShape("complex", ("messages", "tags", "note", "retries"))
_SCHEDULE_ARGS: Final = (
    "job",
    "payload",
    "priority",
    "max_attempts",
    "backoff_ms",
    "retry_on",
    "start_at_ms",
    "interval_ms",
    "jitter",
)
_SCHEDULE: Final = RequestShape("schedule", _SCHEDULE_ARGS, {"job": "job.name"})


def echo_request(message: str, delay_ms: int | None = None) -> dict[str, object]:
    """The request map of ``echo``."""
    return _ECHO.build({"message": message, "delay_ms": delay_ms})


def complex_request(
    messages: Sequence[str | Mapping[str, object]] | None = None,
    tags: Sequence[str] | None = None,
    note: str | None = None,
    retries: int | None = None,
) -> dict[str, object]:
    """The request map of ``complex``; a message given as text becomes ``{"message": text}``."""
    return _COMPLEX.build({"messages": messages, "tags": tags, "note": note, "retries": retries})


def schedule_request(
    job: str | None = None,
    *,
    payload: Sequence[str] | None = None,
    priority: Priority | None = None,
    max_attempts: int | None = None,
    backoff_ms: int | None = None,
    retry_on: Sequence[str] | None = None,
    start_at_ms: int | None = None,
    interval_ms: int | None = None,
    jitter: int | None = None,
) -> dict[str, object]:
    """The request map of ``schedule``; sub-maps with no value given are left out.

    ``priority``: an integer for a 0.2 library, ``"low"``, ``"normal"`` or
    ``"high"`` for a 0.3 library.
    """
    return _SCHEDULE.build(
        {
            "job": job,
            "payload": payload,
            "priority": priority,
            "max_attempts": max_attempts,
            "backoff_ms": backoff_ms,
            "retry_on": retry_on,
            "start_at_ms": start_at_ms,
            "interval_ms": interval_ms,
            "jitter": jitter,
        }
    )


# The signatures of the typed methods, for mypy, help() and argument binding:
# TypedCall binds the arguments to one of these and builds the request from
# the method table (RequestShape), so the bodies never run. Each declares the
# keyword-only ``timeout`` that every typed method takes and hands to the
# client's ``call``: a ParamSpec cannot gain a keyword-only parameter (PEP 612),
# so the signature is spelled here, whole.


def _typed_echo(
    message: str, delay_ms: int = 0, *, timeout: Timeout = CLIENT_TIMEOUT
) -> None:  # pragma: no cover - a signature
    """The typed ``echo``, which has always sent ``delayMs`` (default 0)."""


def _typed_complex(
    messages: Sequence[str | Mapping[str, object]] | None = None,
    tags: Sequence[str] | None = None,
    note: str | None = None,
    retries: int | None = None,
    *,
    timeout: Timeout = CLIENT_TIMEOUT,
) -> None:  # pragma: no cover - a signature
    """The typed ``complex``, as :func:`complex_request`."""


def _typed_schedule(
    job: str | None = None,
    *,
    payload: Sequence[str] | None = None,
    priority: Priority | None = None,
    max_attempts: int | None = None,
    backoff_ms: int | None = None,
    retry_on: Sequence[str] | None = None,
    start_at_ms: int | None = None,
    interval_ms: int | None = None,
    jitter: int | None = None,
    timeout: Timeout = CLIENT_TIMEOUT,
) -> None:  # pragma: no cover - a signature
    """The typed ``schedule``, as :func:`schedule_request`."""


def _no_request(*, timeout: Timeout = CLIENT_TIMEOUT) -> None:  # pragma: no cover - a signature
    """The typed methods that take no argument (an empty map)."""


# --- one definition of each typed method, for both clients --------------------


class _Caller(Protocol):
    """What a typed method needs of its client: ``call`` (a coroutine function or not)."""

    def call(self, method: str, request: object, *, timeout: Timeout = CLIENT_TIMEOUT) -> Any: ...


class TypedCall(Generic[P, T]):
    """A typed method of both clients: sends the request its arguments make to ``method``.

    A descriptor: on a :class:`Client` the attribute is a bound method
    returning the answer (typed ``T``), on an :class:`AsyncClient` a bound
    coroutine method (``async def``-like, so the request is built when awaited).
    Either way the call goes through the client's ``call(method, request,
    timeout=...)``. ``signature`` gives the typed parameters (it is never
    called): the arguments are bound to it and become the request by the
    method table (:class:`RequestShape`: field names, nesting, left-out
    keys; ``paths`` names the fields whose argument is not their snake_case
    name). It must take a keyword-only ``timeout``, whose value goes to
    ``call``. On the class it is the descriptor itself, which carries the
    method's docstring and signature for ``help()`` and can be called with
    the client as first argument, like an unbound method. ``result`` types
    the answer; it is not checked at run time, as the daemon's answers are not.
    """

    def __init__(
        self,
        method: str,
        signature: Callable[P, object],
        result: type[T],
        doc: str,
        paths: Mapping[str, str] | None = None,
    ) -> None:
        self.method = method
        self.__doc__ = doc
        params = inspect.signature(signature)
        timeout = params.parameters.get("timeout")
        if timeout is None or timeout.kind is not inspect.Parameter.KEYWORD_ONLY:
            raise TypeError(f"{method}: the signature must take a keyword-only timeout")
        names = [name for name in params.parameters if name != "timeout"]
        #: How the arguments become the request.
        self.shape = RequestShape(method, names, paths)
        shape = self.shape
        self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
        self.__signature__ = params.replace(
            parameters=[self_param, *params.parameters.values()], return_annotation=result
        )

        def request(args: tuple[object, ...], kwargs: dict[str, object]) -> tuple[object, Timeout]:
            bound = params.bind(*args, **kwargs)
            bound.apply_defaults()
            values = bound.arguments
            timeout = _timeout_of(values)
            return (shape.build(values) if names else NO_REQUEST), timeout

        def blocking(client: _Caller, /, *args: P.args, **kwargs: P.kwargs) -> Any:
            payload, timeout = request(args, kwargs)
            return client.call(method, payload, timeout=timeout)

        async def asynchronous(client: _Caller, /, *args: P.args, **kwargs: P.kwargs) -> Any:
            payload, timeout = request(args, kwargs)
            return await client.call(method, payload, timeout=timeout)

        # Made once, bound per access (as Python binds functions), so that
        # ``c.echo == c.echo`` and help(c.echo) behave as for a plain method.
        self._functions = (blocking, asynchronous)

    def __set_name__(self, owner: type[Any], name: str) -> None:
        self.__name__ = name
        self.__qualname__ = f"{owner.__qualname__}.{name}"
        for function in self._functions:
            # __wrapped__ leads inspect.signature() to our __signature__ (self dropped once bound).
            functools.update_wrapper(function, self, ("__name__", "__qualname__", "__doc__"), ())

    @overload
    def __get__(self, instance: None, owner: type[Any] | None = None) -> Self: ...

    @overload
    def __get__(self, instance: Client, owner: type[Any] | None = None) -> Callable[P, T]: ...

    # A Coroutine, not just an Awaitable, as an ``async def`` gives: asyncio.create_task takes it.
    @overload
    def __get__(
        self, instance: AsyncClient, owner: type[Any] | None = None
    ) -> Callable[P, Coroutine[Any, Any, T]]: ...

    def __get__(self, instance: _Caller | None, owner: type[Any] | None = None) -> Any:
        """The method bound to ``instance``; on the class, this descriptor."""
        if instance is None:
            return self
        return self._bind(instance)

    def __call__(self, client: _Caller, /, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Call the method on ``client`` (``Client.echo(client, "x")``)."""
        return self._bind(client)(*args, **kwargs)

    def _bind(self, client: _Caller) -> Callable[..., Any]:
        blocking, asynchronous = self._functions
        function = asynchronous if _calls_async(type(client)) else blocking
        return types.MethodType(function, client)


def _timeout_of(kwargs: Mapping[str, object]) -> Timeout:
    """The ``timeout=`` a typed method was given."""
    timeout = kwargs.get("timeout", CLIENT_TIMEOUT)
    if timeout is None or timeout is CLIENT_TIMEOUT or isinstance(timeout, int | float):
        return timeout
    raise TypeError(f"timeout must be a number of seconds or None, not {timeout!r}")


@functools.cache  # asked on every attribute access; inspect's answer costs ~0.4 us
def _calls_async(client_class: type[_Caller]) -> bool:
    """Whether the class's ``call`` is a coroutine function, and so its typed methods are."""
    return inspect.iscoroutinefunction(client_class.call)


def needs_description(method: str) -> bool:
    """Whether ``method`` is checked against describe: no bundled table has it."""
    return not any(method.encode() in interfaces.bundled(g).by_name for g in TABLE_GENERATIONS)


def description_of(describe: Callable[[], dict[str, Any] | None]) -> Described | None:
    """The :class:`Described` of ``describe()``'s answer; None (no check, the daemon
    still checks) from a peer that answers no describe (not a mytimerd, or refusing it)."""
    try:
        answer = describe()
    except (CallError, BadResponse):
        return None
    return Described(answer) if isinstance(answer, dict) else None


class TypedMethods:
    """The typed methods, declared once for Client and AsyncClient (which inherit them).

    Each takes one argument per request field (snake_case); arguments left
    None are left out of the request, so the library's defaults apply. Each
    also takes a keyword-only ``timeout``: seconds for this call, None or 0
    for no limit; left out, the client's ``timeout`` applies.
    """

    def __init__(
        self,
        address: Addresses = None,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        ssl: SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> None:
        """The settings both clients share (see :class:`Client`)."""
        self.ssl = check_context(ssl)
        self.server_hostname = server_hostname
        self.addresses = resolve_addresses(address)
        if ssl is not None or server_hostname is not None:
            given = "ssl=" if ssl is not None else "server_hostname="
            if any(isinstance(a, UnixAddress) for a in self.addresses):
                raise ValueError(
                    f"{given} needs a TCP address (tls:host:port or tcp:host:port); "
                    f"{', '.join(map(str, self.addresses))} is a unix socket, which is not TLS"
                )
            # TLS asked for by its settings: a tcp: address is spoken over TLS too.
            self.addresses = [
                replace(a, tls=True) if isinstance(a, TcpAddress) else a
                for a in self.addresses
            ]
        #: Which address to connect to next (fail-over), shared with subscriptions.
        self.dialer = Dialer(self.addresses)
        # The daemon's description, once a method of another library was called.
        self._described: Described | None = None
        self._default_context: SSLContext | None = None
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        #: The address connected to, once connected.
        self.address: Address | None = None

    def __getattr__(self, name: str) -> Callable[..., Any]:
        """A method of the served library that has no typed method: ``client.shout(text="hi")``.

        Keyword arguments (or one map) are the request's top-level keys
        (``client.shout(req={"text": "hi"})``); the call goes through ``call``,
        so it is checked against the daemon's describe first. On an
        AsyncClient the result is a coroutine function.
        """
        if name.startswith("_"):
            raise AttributeError(name)

        def method(
            request: Mapping[str, object] | None = None,
            /,
            *,
            timeout: Timeout = CLIENT_TIMEOUT,
            **fields: object,
        ) -> Any:
            payload = {**(request or {}), **fields}
            caller: _Caller = self
            return caller.call(name, payload or NO_REQUEST, timeout=timeout)

        method.__name__ = method.__qualname__ = name
        return method

    def tls_for(self, address: Address) -> tuple[SSLContext, str] | None:
        """The context and server name to speak TLS to ``address`` with, or None for plaintext.

        The context is ``ssl=``, or :func:`ssl.create_default_context` (the
        system's CA store, made once per client); the name is
        ``server_hostname=``, or the address's host.
        """
        if not isinstance(address, TcpAddress) or not address.tls:
            return None
        context = self.ssl
        if context is None:
            if self._default_context is None:
                self._default_context = create_default_context()
            context = self._default_context
        return context, self.server_hostname or address.host

    @property
    def timeout(self) -> float | None:
        """Seconds each call may take unless its ``timeout=`` says otherwise; None: no limit.

        Set to None or 0 for no limit (0 is stored as None); negative is a ValueError.
        """
        return self._timeout

    @timeout.setter
    def timeout(self, seconds: float | None) -> None:
        self._timeout = check_timeout(seconds, "timeout")

    @property
    def connect_timeout(self) -> float | None:
        """Seconds each connection attempt may take; None (or 0 when set): no limit."""
        return self._connect_timeout

    @connect_timeout.setter
    def connect_timeout(self, seconds: float | None) -> None:
        self._connect_timeout = check_timeout(seconds, "connect_timeout")

    version = TypedCall(
        "version", _no_request, str, "The library's version string (``nim-timer v0.1.0``)."
    )
    lib_version = TypedCall(
        "lib_version",
        _no_request,
        str,
        "The library's version string from its static call (0.3 libraries; a 0.2 "
        "library's daemon answers ``mytimerd.UnknownMethod``).",
    )
    echo = TypedCall(
        "echo",
        _typed_echo,
        EchoResult,
        "Echo ``message`` back after ``delay_ms`` milliseconds.",
    )
    complex = TypedCall(
        "complex",
        _typed_complex,
        ComplexResult,
        "Summarise ``messages`` (texts or EchoRequest maps), ``tags`` and the optional values.\n"
        "\n"
        "Arguments left None are left out of the request (library defaults).",
    )
    schedule = TypedCall(
        "schedule",
        _typed_schedule,
        ScheduleResult,
        "Plan job ``job``; arguments left None are left out (library defaults).\n"
        "\n"
        "``priority``: an integer for a 0.2 library, ``low``, ``normal`` or ``high`` for 0.3.",
        {"job": "job.name"},
    )
    describe = TypedCall(
        "mytimerd.describe",
        _no_request,
        dict[str, Any],
        "``mytimerd.describe``: versions, timer name, methods, limits, error names.",
    )
    ping = TypedCall(
        "mytimerd.ping",
        _no_request,
        dict[str, Any],
        "``mytimerd.ping``: whether the library answers its liveness probe.",
    )
    stats = TypedCall(
        "mytimerd.stats",
        _no_request,
        dict[str, Any],
        "``mytimerd.stats``: uptime, connections, calls, errors and latencies.",
    )
