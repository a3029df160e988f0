"""What the library's CDDL does not say, keyed by the names the CDDL uses.

Docs, value ranges, cross-field checks, mytimerctl option names, examples,
and the events (the CDDL names none). A method, type or field with no entry
here still works everywhere; an entry for a name the CDDL lacks is ignored.
Also the daemon's own methods, which no library description has.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from .record import Record, field
from .schema import INT64_MAX, INT64_MIN, Array, Check, Field, Text, invalid

#: Largest |delayMs| accepted (about 31.7 years). The real library's clock
#: overflows, and aborts the whole process, near 9.2e12 ms.
DELAY_MS_LIMIT: Final = 10**12


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


class MethodNotes(Record):
    """What the overlay adds to a method."""

    doc: str = ""
    example: Mapping[str, Any] = field(default_factory=dict)
    checks: tuple[Check, ...] = ()


class FieldNotes(Record):
    """What the overlay adds to a map key (``Type.key`` in :data:`FIELDS`)."""

    doc: str = ""
    #: An integer range narrower than int64.
    range: tuple[int, int] | None = None
    #: The mytimerctl option name, when the key's own does not read well.
    cli: str | None = None
    #: Milliseconds the library holds the call: bounded by the daemon's --max-delay.
    holds: bool = False


class EventNotes(Record):
    """An event: the type of its payload (a CDDL rule name) and what it means.
    It is part of an interface whose description has that type."""

    payload: str
    doc: str


METHODS: Final[Mapping[str, MethodNotes]] = {
    "version": MethodNotes("The library's version string."),
    "lib_version": MethodNotes(
        "The library's version string, from a static call (no context is involved)."
    ),
    "echo": MethodNotes(
        "Echo a message back after an optional delay; fires the on_echo_fired event.",
        example={"req": {"message": "hello", "delayMs": 0}},
    ),
    "complex": MethodNotes(
        "Summarise a list of messages, tags and optional values.",
        example={"req": {"messages": [{"message": "a", "delayMs": 0}], "tags": ["t"]}},
    ),
    "schedule": MethodNotes(
        "Plan a job: its id, runs per minute, first run and backoff.",
        example={
            "job": {"name": "backup", "payload": []},
            "retry": {"maxAttempts": 3, "backoffMs": 100, "retryOn": ["timeout"]},
            "schedule": {"startAtMs": 1000, "intervalMs": 250},
        },
        checks=(_schedule_sum_fits,),
    ),
}

TYPES: Final[Mapping[str, str]] = {
    "EchoRequest": "One echo.",
    "ComplexRequest": "A request with nested and optional values.",
    "JobSpec": "A job.",
    "RetryPolicy": "When and how a job is retried.",
    "ScheduleConfig": "When a job runs.",
}

FIELDS: Final[Mapping[str, FieldNotes]] = {
    "MyTimerEchoReq.req": FieldNotes("The echo."),
    "MyTimerComplexReq.req": FieldNotes("The request."),
    "MyTimerScheduleReq.job": FieldNotes("The job."),
    "MyTimerScheduleReq.retry": FieldNotes("Its retry policy."),
    "MyTimerScheduleReq.schedule": FieldNotes("When it runs."),
    "EchoRequest.message": FieldNotes("Text to echo back."),
    "EchoRequest.delayMs": FieldNotes(
        "Milliseconds to wait before replying (<= 0: reply at once).",
        range=(-DELAY_MS_LIMIT, DELAY_MS_LIMIT),
        cli="delay-ms",
        holds=True,
    ),
    "ComplexRequest.messages": FieldNotes("Messages to count (delays are ignored).", cli="message"),
    "ComplexRequest.tags": FieldNotes("Free-form tags.", cli="tag"),
    "ComplexRequest.note": FieldNotes("A note; an empty string counts as present."),
    "ComplexRequest.retries": FieldNotes("Reported back in the summary."),
    "JobSpec.name": FieldNotes("Job name (must not be empty).", cli="job"),
    "JobSpec.payload": FieldNotes("Job arguments."),
    "JobSpec.priority": FieldNotes("Job priority."),
    "RetryPolicy.maxAttempts": FieldNotes("Attempts allowed (must be positive)."),
    "RetryPolicy.backoffMs": FieldNotes("Milliseconds between attempts."),
    "RetryPolicy.retryOn": FieldNotes("Conditions that trigger a retry."),
    "ScheduleConfig.startAtMs": FieldNotes("First run, in ms."),
    "ScheduleConfig.intervalMs": FieldNotes("Period in ms (<= 0: runs once)."),
    "ScheduleConfig.jitter": FieldNotes("Added to startAtMs."),
    "EchoResponse.echoed": FieldNotes("The message."),
    "EchoResponse.timerName": FieldNotes("The daemon's timer name (--name)."),
    "ComplexResponse.summary": FieldNotes("One-line summary."),
    "ComplexResponse.itemCount": FieldNotes("Number of messages."),
    "ComplexResponse.hasNote": FieldNotes("Whether a note was given."),
    "ScheduleResult.jobId": FieldNotes("<timer name>:<job name>."),
    "ScheduleResult.willRunCount": FieldNotes("Runs in the next minute."),
    "ScheduleResult.firstRunAtMs": FieldNotes("startAtMs + jitter."),
    "ScheduleResult.effectiveBackoffMs": FieldNotes("The backoff the job will use."),
    "ScheduleResult.priority": FieldNotes("The job's priority."),
    "EchoEvent.message": FieldNotes("The message echoed."),
    "EchoEvent.echoCount": FieldNotes("Echoes fired by this call."),
    "OnJobScheduledPayload.jobId": FieldNotes("<timer name>:<job name>."),
    "OnJobScheduledPayload.willRunCount": FieldNotes("Runs in the next minute."),
}

EVENTS: Final[Mapping[str, EventNotes]] = {
    "on_echo_fired": EventNotes("EchoEvent", "An echo fired (before or after its reply)."),
    "on_job_scheduled": EventNotes("OnJobScheduledPayload", "A job was scheduled."),
}

#: The daemon's own methods: (name, doc, request fields). Their answers are
#: maps whose shape the docs describe.
DAEMON_METHODS: Final[tuple[tuple[str, str, tuple[Field, ...]], ...]] = (
    (
        "mytimerd.describe",
        "The daemon and library versions, the timer name, every method with its "
        "request and response schema and whether the library has it, the events, the "
        "limits and the error names.",
        (),
    ),
    ("mytimerd.ping", "Health: whether the library answers its liveness probe in time.", ()),
    (
        "mytimerd.stats",
        "Uptime, connections, calls and errors by method and name, calls in "
        "flight, events, stale warnings and latency percentiles.",
        (),
    ),
    (
        "mytimerd.subscribe",
        "Turn this connection into an event stream: one answer acknowledging the "
        "subscription, then one RET_OK frame per event (the library's event body).",
        (
            Field(
                "events",
                Array(Text()),
                "Event names; none or empty: every event the library has.",
                [],
                cli="event",
            ),
        ),
    ),
)
