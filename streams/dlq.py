"""The dead-letter sink: every rejected input is kept with its origin and the reason."""

from __future__ import annotations

import base64
import logging

from streams.events import DeadLetter, to_json

log = logging.getLogger(__name__)


class DeadLetterSink:
    """Sends DeadLetter records to the dlq topic; never raises into the caller's loop.

    The caller flushes the producer before it commits the source offsets, so a rejected
    input is either in the DLQ or will be read (and rejected) again: never lost.
    """

    def __init__(self, producer, topic: str, component: str) -> None:
        self.producer = producer
        self.topic = topic
        self.component = component
        self.count = 0

    def send(self, message, reason: str) -> None:
        """``message``: a kafka-python ConsumerRecord (topic, partition, offset, key, value)."""
        try:
            letter = DeadLetter(
                source_topic=message.topic,
                partition=message.partition,
                offset=message.offset,
                key_b64=base64.b64encode(message.key) if message.key is not None else None,
                value_b64=base64.b64encode(message.value or b""),
                reason=reason[:2000],
                component=self.component,
            )
            self.producer.send(self.topic, key=message.key, value=to_json(letter))
            self.count += 1
            log.warning(
                "dead letter %s/%d/%d: %s", message.topic, message.partition, message.offset, reason
            )
        except Exception:  # the producer's own errors surface at flush(), before the commit
            log.exception(
                "could not queue dead letter for %s/%d/%d",
                message.topic,
                message.partition,
                message.offset,
            )
