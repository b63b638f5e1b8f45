"""The gateway's metrics in Prometheus' text exposition format (SPEC.md 13.7).

Theory of operation
-------------------
Everything a protocol worker does that an operator counts is already a control-log record
(the audit events: a message accepted, a session ended with its TLS version and refusals, a
login that failed, what a POP3 session retrieved and deleted). :class:`Metrics` observes the
control log as the journal writes it (``Archive.observe_control``) and folds those records
into counters, so the numbers come from the same records an auditor reads, from every worker,
with no counting of their own in the protocol code. The group commit tells it each round's
duration and its fdatasyncs' (``CommitGroup.on_round``): two histograms. What is a state
rather than a count (sessions open, the store's size, the certificate's expiry, each
mailbox's backlog) the server reads at scrape time and hands over as :class:`Gauges`.

The same fold keeps a day of one-minute buckets of messages in (accepted: ``MessageAccepted``
and the proxies' ``stored``, as ``gateway_messages_accepted_total``) and out (retrieved:
``Pop3SessionEnded`` and ``Pop3SessionProgress``, as ``gateway_messages_retrieved_total``),
bucketed by each record's own time: a ring of ``MINUTES`` slots, each stamped with its
minute, so a slot from a day ago is reused rather than added to. The admin ``status`` reply
hands it to the console's chart (SPEC.md 13.3, 13.5).

Counters start at zero when the journal starts, as Prometheus counters do. Label values that
come from records (a refusal's code, a login failure's reason, a TLS version) are normalized
and capped at ``MAX_LABEL_VALUES`` distinct values per metric ("other" beyond), so nothing a
client sends can grow the number of series. The exposition is ``prometheus_client``'s
(its metric families and ``generate_latest``), not ours.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from ..events import (
    AdminLogin,
    AdminSessionEnded,
    CertificateIssued,
    CertificateRenewalFailed,
    ConnectionsSummarized,
    MessageAccepted,
    MessageRef,
    Pop3Login,
    Pop3ProxySessionEnded,
    Pop3SessionEnded,
    Pop3SessionProgress,
    RefusalCount,
    SmtpLogin,
    SmtpProxySessionEnded,
    SmtpSessionEnded,
    decode_control_event,
)
from ..log import LogRecord, RecordKind

__all__ = [
    "LATENCY_BUCKETS",
    "MAX_LABEL_VALUES",
    "MINUTES",
    "Gauges",
    "MailboxGauges",
    "Metrics",
    "MinuteCount",
    "MinuteRing",
]

# Seconds: a commit round is one fdatasync or two on a good disk (about 1-10 ms), more on a
# slow or busy one.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
MAX_LABEL_VALUES = 50
_OTHER = "other"
_TLS_VERSIONS = frozenset({"TLSv1.2", "TLSv1.3"})
MINUTES = 1440  # the per-minute ring: one day of one-minute buckets


@dataclass(frozen=True, slots=True)
class MinuteCount:
    minute: int  # Unix time // 60 of the bucket's start
    accepted: int  # messages in
    retrieved: int  # messages out


class MinuteRing:
    """Messages in and out per minute over the last ``size`` minutes: fixed memory
    whatever the traffic, and a record far older than the newest one seen is dropped."""

    def __init__(self, size: int = MINUTES) -> None:
        self.size = size
        self._minute = [-1] * size  # which minute each slot counts now
        self._accepted = [0] * size
        self._retrieved = [0] * size
        self._newest = -1

    def add(self, at: datetime, *, accepted: int = 0, retrieved: int = 0) -> None:
        if not (accepted or retrieved):
            return
        minute = int(at.timestamp() // 60)
        if minute <= self._newest - self.size:
            return  # out of the window already (a record dated a day before the others)
        slot = minute % self.size
        if self._minute[slot] != minute:
            if self._minute[slot] > minute:
                return  # the slot holds a newer minute: this one left the window
            self._minute[slot] = minute
            self._accepted[slot] = 0
            self._retrieved[slot] = 0
        self._accepted[slot] += accepted
        self._retrieved[slot] += retrieved
        self._newest = max(self._newest, minute)

    def window(self, moment: datetime) -> list[MinuteCount]:
        """The minutes of the ``size`` up to ``moment``'s (included) that counted anything,
        oldest first."""
        last = int(moment.timestamp() // 60)
        first = last - self.size + 1
        counts = [
            MinuteCount(minute, self._accepted[slot], self._retrieved[slot])
            for slot, minute in enumerate(self._minute)
            if first <= minute <= last
        ]
        return sorted(counts, key=lambda count: count.minute)


@dataclass(frozen=True, slots=True)
class MailboxGauges:
    mailbox_id: str
    name: str
    status: str
    messages: int  # waiting to be retrieved (and deleted)
    octets: int
    oldest_age: float | None  # seconds since the oldest waiting message was committed
    last_retrieval_age: float | None  # seconds since a POP3 session last retrieved from it
    damaged: bool
    alarms: frozenset[str]  # its backlog alarms up (SPEC.md 13.8)


@dataclass(frozen=True, slots=True)
class Gauges:
    """What is read at scrape time."""

    sessions_active: int
    workers: int  # protocol workers connected to the journal now
    workers_connected_total: int  # worker connections since the journal started
    store_bytes: int
    store_free_bytes: int
    certificate_expiry: float | None  # Unix time the served certificate expires
    store_space_low: bool  # under [store] min_free_bytes: intake refuses
    mailboxes: Sequence[MailboxGauges]


@dataclass(slots=True)
class _Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        for i, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                self.counts[i] += 1
                break
        else:
            self.counts[-1] += 1
        self.total += seconds

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        cumulative, buckets = 0, []
        for bound, count in zip([*map(str, LATENCY_BUCKETS), "+Inf"], self.counts, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=self.total)


class _Counter:
    """A counter by label values, at most MAX_LABEL_VALUES distinct values per label."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str]) -> None:
        self.name, self.documentation, self.labels = name, documentation, list(labels)
        self.values: dict[tuple[str, ...], float] = defaultdict(float)
        self._seen: list[set[str]] = [set() for _ in labels]

    def add(self, amount: float, *values: str) -> None:
        capped = []
        for seen, value in zip(self._seen, values, strict=True):
            kept = _OTHER if value not in seen and len(seen) >= MAX_LABEL_VALUES else value
            seen.add(kept)
            capped.append(kept)
        self.values[tuple(capped)] += amount

    def family(self) -> CounterMetricFamily:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for values, amount in sorted(self.values.items()):
            family.add_metric(list(values), amount)
        return family


class Metrics:
    """Counters folded from the control log as it is written, histograms of the group
    commit, and the exposition of both with the gauges of the moment."""

    def __init__(self, listener_protocols: Mapping[str, str]) -> None:
        self._protocols = dict(listener_protocols)  # listener name -> "smtp", "pop3", ...
        self.accepted = _Counter(
            "gateway_messages_accepted",
            "Messages stored and acknowledged, by how they came in",
            ["origin"],
        )
        self.accepted_bytes = _Counter(
            "gateway_message_bytes_accepted",
            "Octets of the messages stored and acknowledged, by how they came in",
            ["origin"],
        )
        self.refused = _Counter(
            "gateway_refusals",
            "Recipients, messages and sessions refused, by stage and reply code",
            ["stage", "code"],
        )
        self.connections_refused = _Counter(
            "gateway_connections_refused",
            "Connections refused at accept by the session limits, by listener",
            ["listener"],
        )
        self.sessions = _Counter(
            "gateway_sessions",
            "Sessions ended, by protocol and TLS version (unrecorded: quiet sessions folded "
            "into a listener's summary)",
            ["protocol", "tls"],
        )
        self.login_failures = _Counter(
            "gateway_login_failures",
            "Failed logins, by protocol and kind",
            ["protocol", "reason"],
        )
        self.retrieved = _Counter(
            "gateway_messages_retrieved",
            "Messages sent whole to a POP3 retrieval client",
            [],
        )
        self.deleted = _Counter(
            "gateway_messages_deleted",
            "Messages deleted by a POP3 retrieval client's QUIT",
            [],
        )
        self.certificates_issued = _Counter(
            "gateway_certificates_issued",
            "Certificates the ACME CA issued (first, or renewal)",
            ["kind"],
        )
        self.certificate_failures = _Counter(
            "gateway_certificate_renewal_failures",
            "Failed attempts to obtain or renew the ACME certificate, by stage",
            ["stage"],
        )
        self.rounds = _Histogram()
        self.syncs = _Histogram()
        self.per_minute = MinuteRing()

    # -- folding --------------------------------------------------------------------------------

    def observe_control(self, records: list[LogRecord], durable: bool) -> None:
        """``Archive.observe_control``: every round of control records, as written."""
        del durable
        for record in records:
            if record.kind == RecordKind.EVENT:
                event = decode_control_event(record.body)
                if event is not None:
                    self._fold(event)

    def observe_round(self, round_seconds: float, sync_seconds: float) -> None:
        """``CommitGroup.on_round``: one round of the group commit."""
        self.rounds.observe(round_seconds)
        if sync_seconds > 0:
            self.syncs.observe(sync_seconds)

    def _fold(self, event: object) -> None:
        match event:
            case MessageAccepted():
                self.accepted.add(1, "journal")
                self.accepted_bytes.add(event.size, "journal")
                self.per_minute.add(event.at, accepted=1)
            case SmtpSessionEnded():
                self.sessions.add(1, "smtp", _tls(event.tls))
                self._refusals(event.refusals)
            case Pop3SessionEnded() | Pop3SessionProgress():
                if isinstance(event, Pop3SessionEnded):
                    self.sessions.add(1, "pop3", _tls(event.tls))
                self.retrieved.add(len(event.retrieved))
                self.deleted.add(len(event.deleted))
                self.per_minute.add(event.at, retrieved=len(event.retrieved))
            case SmtpProxySessionEnded():
                self.sessions.add(1, "smtp-proxy", _tls(event.client_tls))
                self._stored("smtp-proxy", event.stored, event.at)
            case Pop3ProxySessionEnded():
                self.sessions.add(1, "pop3-proxy", _tls(event.client_tls))
                self._stored("pop3-proxy", event.stored, event.at)
            case AdminSessionEnded():
                self.sessions.add(1, "admin", "TLSv1.3")  # the admin listener has TLS 1.3 only
            case ConnectionsSummarized():
                protocol = self._protocols.get(event.listener, _OTHER)
                if event.sessions:
                    self.sessions.add(event.sessions, protocol, "unrecorded")
                if event.refused:
                    self.connections_refused.add(event.refused, event.listener)
                self._refusals(event.refusals)
            case Pop3Login() if not event.success:
                self.login_failures.add(1, "pop3", _reason(event.reason))
            case SmtpLogin() if not event.success:
                self.login_failures.add(1, "smtp-proxy", _reason(event.reason))
            case AdminLogin() if not event.success:
                self.login_failures.add(1, "admin", _reason(event.reason))
            case CertificateIssued():
                self.certificates_issued.add(1, "renewal" if event.renewal else "first")
            case CertificateRenewalFailed():
                self.certificate_failures.add(1, event.stage)

    def _refusals(self, refusals: Iterable[RefusalCount]) -> None:
        for refusal in refusals:
            self.refused.add(refusal.count, refusal.stage, str(refusal.code))

    def _stored(self, origin: str, stored: Sequence[MessageRef], at: datetime) -> None:
        self.accepted.add(len(stored), origin)
        self.accepted_bytes.add(sum(ref.size for ref in stored), origin)
        self.per_minute.add(at, accepted=len(stored))

    # -- the exposition -------------------------------------------------------------------------

    def exposition(self, gauges: Gauges) -> bytes:
        """The text a scrape gets (``text/plain; version=0.0.4``)."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Scrape(self, gauges))
        return generate_latest(registry)

    def families(self, gauges: Gauges) -> Iterator[Metric]:
        for counter in (
            self.accepted,
            self.accepted_bytes,
            self.refused,
            self.connections_refused,
            self.sessions,
            self.login_failures,
            self.retrieved,
            self.deleted,
            self.certificates_issued,
            self.certificate_failures,
        ):
            yield counter.family()
        yield self.rounds.family(
            "gateway_commit_round_seconds",
            "Group-commit rounds, from taking the queued records to all of them durable",
        )
        yield self.syncs.family(
            "gateway_fsync_seconds", "The fdatasyncs of a group-commit round, together"
        )
        yield _gauge(
            "gateway_sessions_active", "SMTP and POP3 sessions open now", gauges.sessions_active
        )
        yield _gauge("gateway_workers", "Protocol workers connected to the journal", gauges.workers)
        yield CounterMetricFamily(
            "gateway_worker_connections",
            "Protocol workers that connected to the journal since it started (a restarted "
            "worker connects again)",
            value=gauges.workers_connected_total,
        )
        yield _gauge("gateway_store_bytes", "Octets under the data folder", gauges.store_bytes)
        yield _gauge(
            "gateway_store_free_bytes",
            "Octets free on the data folder's file system",
            gauges.store_free_bytes,
        )
        yield _gauge(
            "gateway_store_space_low",
            "1 while the data folder's file system is under store.min_free_bytes (intake refuses)",
            int(gauges.store_space_low),
        )
        if gauges.certificate_expiry is not None:
            yield _gauge(
                "gateway_tls_certificate_expiry_timestamp_seconds",
                "When the certificate the listeners serve expires (Unix time)",
                gauges.certificate_expiry,
            )
        yield from _mailbox_families(gauges.mailboxes)


class _Scrape(Collector):
    def __init__(self, metrics: Metrics, gauges: Gauges) -> None:
        self._metrics, self._gauges = metrics, gauges

    def collect(self) -> Iterable[Metric]:
        return self._metrics.families(self._gauges)


def _mailbox_families(mailboxes: Sequence[MailboxGauges]) -> Iterator[Metric]:
    info = GaugeMetricFamily(
        "gateway_mailbox_info",
        "Each mailbox: its name and status",
        labels=["mailbox", "name", "status"],
    )
    waiting = GaugeMetricFamily(
        "gateway_mailbox_messages_waiting", "Messages waiting to be retrieved", labels=["mailbox"]
    )
    octets = GaugeMetricFamily(
        "gateway_mailbox_bytes_waiting", "Octets of the messages waiting", labels=["mailbox"]
    )
    oldest = GaugeMetricFamily(
        "gateway_mailbox_oldest_waiting_seconds",
        "Age of the oldest message waiting (absent when none waits)",
        labels=["mailbox"],
    )
    retrieval = GaugeMetricFamily(
        "gateway_mailbox_last_retrieval_seconds",
        "Seconds since a POP3 session last retrieved from the mailbox (absent: never)",
        labels=["mailbox"],
    )
    damaged = GaugeMetricFamily(
        "gateway_mailbox_damaged",
        "1 while the mailbox is out of service, damaged",
        labels=["mailbox"],
    )
    alarm = GaugeMetricFamily(
        "gateway_mailbox_alarm",
        "1 while the backlog alarm is up: age (oldest waiting), size (octets), quiet (no mail)",
        labels=["mailbox", "alarm"],
    )
    for box in mailboxes:
        for kind in ("age", "size", "quiet"):
            alarm.add_metric([box.mailbox_id, kind], int(kind in box.alarms))
        info.add_metric([box.mailbox_id, box.name, box.status], 1)
        waiting.add_metric([box.mailbox_id], box.messages)
        octets.add_metric([box.mailbox_id], box.octets)
        if box.oldest_age is not None:
            oldest.add_metric([box.mailbox_id], box.oldest_age)
        if box.last_retrieval_age is not None:
            retrieval.add_metric([box.mailbox_id], box.last_retrieval_age)
        damaged.add_metric([box.mailbox_id], int(box.damaged))
    yield from (info, waiting, octets, oldest, retrieval, damaged, alarm)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value if math.isfinite(value) else 0)


def _tls(description: str) -> str:
    """The TLS version of an audit record's ``"TLSv1.3 TLS_AES_256_GCM_SHA384"``."""
    if not description:
        return "none"
    version = description.split(" ", 1)[0]
    return version if version in _TLS_VERSIONS else _OTHER


def _reason(reason: str) -> str:
    """A failure's kind: its reason up to any detail after a colon, at most 40 characters."""
    kind = reason.split(":", 1)[0].strip().lower()[:40]
    return kind or "unknown"
