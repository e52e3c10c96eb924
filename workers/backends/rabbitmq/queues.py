"""What the fleet declares on RabbitMQ, per ``CATFLEET_RABBITMQ_QUEUE_TYPE``, and the refusal of a
queue that exists with other arguments.

Classic (the default, Dramatiq's own): ``<q>`` and ``<q>.DQ`` dead-letter to ``<q>.XQ`` through
the default exchange; ``<q>.XQ`` keeps dead letters for Dramatiq's dead-message TTL.

Quorum: the same three queues as quorum queues (durable, replicated by Raft over the cluster's
nodes, a leader on one of them), and

- ``<q>``: ``x-delivery-limit`` = ``CATFLEET_MAX_DELIVERIES``. RabbitMQ counts every return of a
  message to the queue (a consumer's connection lost with the message unacked, a requeue) and
  dead-letters it once it has come back more than the limit: at most ``max_deliveries + 1``
  deliveries, the same as the fleet's ``DeliveryLimit`` middleware, which runs a message at most
  ``max_deliveries`` times and fails the next delivery itself, recording why
  (``DeliveryLimitExceeded``). The broker's limit is the backstop for when that last delivery is
  lost too or the delivery counter in PostgreSQL cannot be reached; RabbitMQ also counts returns
  of messages a process had prefetched but not started (its connection dropped, a queue paused),
  so its count can run ahead of the fleet's: such a message reaches ``<q>.XQ`` with the
  ``x-death`` reason ``delivery_limit`` and no failure record.
- ``<q>.DQ``: no delivery limit: the delay consumer holds a retry until its eta (up to the
  longest backoff), and every reconnect in between returns it uncounted by the fleet.
- ``<q>`` and ``<q>.DQ`` dead-letter at least once (``x-dead-letter-strategy: at-least-once``,
  which RabbitMQ allows with ``x-overflow: reject-publish``; no length limit is set): a message
  leaves the source queue only once ``<q>.XQ`` has confirmed it, so a node lost mid-way does not
  drop a dead letter (the default, at most once, can).
- ``<q>.XQ``: no dead-letter exchange and no delivery limit: the dead-letter tool takes dead
  letters without acking them and closing its connection returns them; a limit would count that.

A queue declared with other arguments (classic vs quorum, another delivery limit) makes RabbitMQ
close the channel with ``PRECONDITION_FAILED`` (406); the fleet never deletes or redeclares it:
``QueueMismatch`` says in one line what differs and how to migrate."""

from __future__ import annotations

import re
from typing import Any, Literal

from dramatiq.brokers.rabbitmq import DEAD_MESSAGE_TTL  # ``dramatiq_dead_message_ttl``, as Dramatiq reads it

from pipeline.errors import CatfleetError

QueueType = Literal["classic", "quorum"]


def other(queue_type: QueueType) -> QueueType:
    return "classic" if queue_type == "quorum" else "quorum"


def queue_arguments(queue_type: QueueType, queue: str, *, delivery_limit: int | None) -> dict[str, Any]:
    """Arguments of a canonical queue (``delivery_limit``) or its delay queue (None)."""
    canonical = queue.removesuffix(".DQ")
    args: dict[str, Any] = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": f"{canonical}.XQ"}
    if queue_type == "quorum":
        args |= {
            "x-queue-type": "quorum",
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }
        if delivery_limit is not None:
            args["x-delivery-limit"] = delivery_limit
    return args


def dead_letter_arguments(queue_type: QueueType) -> dict[str, Any]:
    """Arguments of ``<q>.XQ``."""
    args: dict[str, Any] = {"x-message-ttl": DEAD_MESSAGE_TTL}
    if queue_type == "quorum":
        args["x-queue-type"] = "quorum"
    return args


_INEQUIVALENT = re.compile(r"inequivalent arg '([^']+)' for queue '([^']*)' in vhost '([^']*)': (.*)$")
_CURRENT_TYPE = re.compile(r"current is the value '([a-z]+)'")


class QueueMismatch(CatfleetError):
    """A fleet queue exists on RabbitMQ with other arguments than this fleet declares."""

    def __init__(self, message: str, *, queue: str, argument: str):
        super().__init__(message)
        self.queue = queue
        self.argument = argument


def mismatch(
    reply_text: str, queue_type: QueueType, *, existing: QueueType | None = None
) -> QueueMismatch | None:
    """The ``QueueMismatch`` a ``PRECONDITION_FAILED`` reply describes (None: another 406).
    RabbitMQ names the first argument that differs, not always ``x-queue-type``: ``existing`` is
    the queue's type when the caller found it out (a declare with that type's arguments, which
    changes nothing, succeeded)."""
    found = _INEQUIVALENT.search(reply_text)
    if found is None:
        return None
    argument, queue, vhost, detail = found.groups()
    canonical = queue.removesuffix(".DQ").removesuffix(".XQ")
    current = _CURRENT_TYPE.search(detail) if argument == "x-queue-type" else None
    if argument == "x-queue-type":
        existing = existing or ("quorum" if current and current.group(1) == "quorum" else "classic")
    if existing is not None and existing != queue_type:
        what = f"is a {existing} queue, this fleet's are {queue_type}"
    else:
        detail = re.sub(r" of type '[a-z]+'", "", detail)
        what = f"differs from this fleet's ({argument}: {detail})"
    return QueueMismatch(
        f"RabbitMQ queue {queue!r} (vhost {vhost!r}) {what}; it is never redeclared: drain {canonical},"
        f" replay or purge {canonical}.XQ, delete the three (rabbitmqctl delete_queue), or use a new vhost",
        queue=queue,
        argument=argument,
    )
