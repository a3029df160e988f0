"""Shared budgets with a per-peer share: one ledger per budget.

Every budget the clients share (held library calls and their bytes,
unfinished frames, connections, TLS handshakes, subscriptions) has a global
bound and a share that one peer may take. A peer is a unix uid, a TCP
address, or with mutual TLS the certificate's name. The ledger answers
whether an amount fits, keeps the totals, and names the largest holders for
``mytimerd.stats``; it is sans-IO and knows nothing of connections.
"""

from __future__ import annotations

import heapq
from typing import Any, Final, Literal

from ..protocol.errors import DaemonError
from ..protocol.limits import Limits

#: Largest holders of a budget that stats list (a bounded list).
TOP: Final = 5
#: A budget filled to this fraction makes the daemon report itself degraded.
NEARLY_FULL: Final = 0.9

Verdict = Literal["ok", "global", "peer"]


class Budget:
    """One shared budget: ``limit`` in all, ``share`` for any one peer.
    ``what`` names what is counted, for messages ("library calls held")."""

    # Not a dataclass: @dataclass compiles the methods it writes at every start (issue 21).
    def __init__(self, what: str, limit: int, share: int, option: str, share_option: str) -> None:
        self.what = what
        self.limit = limit
        self.share = share
        #: The options that set ``limit`` and ``share``, for messages.
        self.option = option
        self.share_option = share_option
        self.total = 0
        # Peer -> amount held; a peer holding nothing has no entry (bounded by holders).
        self._held: dict[str, int] = {}

    def check(self, peer: str, amount: int = 1) -> Verdict:
        """Whether ``peer`` may take ``amount`` more: "ok", or which bound it would pass."""
        if self.total + amount > self.limit:
            return "global"
        if self._held.get(peer, 0) + amount > self.share:
            return "peer"
        return "ok"

    def take(self, peer: str, amount: int = 1) -> None:
        """Count ``amount`` against ``peer`` (callers check first)."""
        self.total += amount
        self._held[peer] = self._held.get(peer, 0) + amount

    def give(self, peer: str, amount: int = 1) -> None:
        """Return ``amount`` that ``peer`` took."""
        self.total -= amount
        left = self._held.get(peer, 0) - amount
        if left > 0:
            self._held[peer] = left
        else:
            self._held.pop(peer, None)

    def held_by(self, peer: str) -> int:
        """What ``peer`` holds now."""
        return self._held.get(peer, 0)

    def fill(self) -> float:
        """The fraction of the global bound in use."""
        return self.total / self.limit if self.limit else 1.0

    def top(self, n: int = TOP) -> list[tuple[str, int]]:
        """The ``n`` largest holders, largest first."""
        return heapq.nlargest(n, self._held.items(), key=lambda item: item[1])

    def describe_refusal(self, verdict: Verdict, peer: str) -> str:
        """A sentence for a refusal with ``verdict``: which bound, and who holds it."""
        if verdict == "peer":
            return (
                f"{peer} has {self.held_by(peer)} {self.what}, its share "
                f"({self.share_option} {self.share}); other peers are not affected"
            )
        return f"the daemon has {self.total} {self.what} in all ({self.option} {self.limit})"


def refusal(budget: Budget, verdict: Verdict, peer: str, global_error: str) -> DaemonError:
    """The error for a refusal by ``budget``: ``global_error`` past the
    global bound, QuotaExceeded past the peer's share."""
    name = global_error if verdict == "global" else "QuotaExceeded"
    return DaemonError(name, f"{budget.describe_refusal(verdict, peer)}; retry later")


class CallLedger:
    """The library's budget (calls held and their request bytes) and the
    budget of unfinished frames, each with its per-peer share.

    A held call counts against its peer until the library answers it, even
    after a Timeout answer or a disconnect: the library still holds it.
    """

    def __init__(self, limits: Limits) -> None:
        self.calls = Budget(
            "library calls held",
            limits.max_held_calls,
            limits.max_held_calls_per_peer,
            "--max-held-calls",
            "--max-held-calls-per-peer",
        )
        self.bytes = Budget(
            "bytes of requests held by the library",
            limits.max_held_bytes,
            limits.max_held_bytes_per_peer,
            "--max-held-bytes",
            "--max-held-bytes-per-peer",
        )
        self.buffered = Budget(
            "bytes of unfinished request frames",
            limits.max_buffered_bytes,
            limits.max_buffered_bytes_per_peer,
            "--max-buffered-bytes",
            "--max-buffered-bytes-per-peer",
        )
        # Call id -> (request bytes, peer) until the library answers.
        self._held: dict[int, tuple[int, str]] = {}

    def __len__(self) -> int:
        return len(self._held)

    def check_call(self, peer: str, size: int) -> DaemonError | None:
        """Why a call of ``size`` request bytes by ``peer`` cannot be held now."""
        verdict = self.calls.check(peer)
        if verdict != "ok":
            return refusal(self.calls, verdict, peer, "Overloaded")
        verdict = self.bytes.check(peer, size)
        if verdict != "ok":
            return refusal(self.bytes, verdict, peer, "Overloaded")
        return None

    def hold(self, call_id: int, peer: str, size: int) -> None:
        """The library took call ``call_id`` (checked by :meth:`check_call`)."""
        self._held[call_id] = (size, peer)
        self.calls.take(peer)
        self.bytes.take(peer, size)

    def release(self, call_id: int) -> None:
        """The library answered call ``call_id`` (unknown ids are ignored)."""
        held = self._held.pop(call_id, None)
        if held is not None:
            size, peer = held
            self.calls.give(peer)
            self.bytes.give(peer, size)

    def rebuffer(self, peer: str, delta: int) -> DaemonError | None:
        """``peer`` buffers ``delta`` more bytes of unfinished frames (counted
        either way); the error if that passes a bound."""
        verdict = self.buffered.check(peer, delta) if delta > 0 else "ok"
        if delta > 0:
            self.buffered.take(peer, delta)
        else:
            self.buffered.give(peer, -delta)
        if verdict == "ok":
            return None
        return refusal(self.buffered, verdict, peer, "Overloaded")


def nearly_full(budgets: list[Budget]) -> list[str]:
    """Why the daemon is degraded: each global budget at least
    :data:`NEARLY_FULL` full, with its largest holder."""
    out = []
    for budget in budgets:
        if budget.limit and budget.fill() >= NEARLY_FULL:
            top = budget.top(1)
            holder = f"; the largest holder is {top[0][0]} with {top[0][1]}" if top else ""
            out.append(
                f"{budget.what}: {budget.total} of {budget.limit} ({budget.option}){holder}"
            )
    return out


def holders(budgets: list[Budget]) -> dict[str, Any]:
    """For mytimerd.stats: each budget's use, bounds and largest holders."""
    return {
        budget.option.removeprefix("--"): {
            "total": budget.total,
            "limit": budget.limit,
            "perPeer": budget.share,
            "top": [{"peer": peer, "amount": amount} for peer, amount in budget.top()],
        }
        for budget in budgets
    }
