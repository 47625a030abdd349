"""The one exception type that decoding may raise."""

from __future__ import annotations


class DecodeError(ValueError):
    """A frame or node-information message that does not follow JIP-3 (NOTES.md "Strictness").

    `event_type` is the discriminator (None for node information or a frame too short to have
    one), `field` the dotted path of the offending field, `reason` what was wrong.
    """

    def __init__(self, event_type: int | None, field: str, reason: str, tag: str | None = None) -> None:
        self.event_type = event_type
        self.field = field
        self.reason = reason
        if event_type is None:
            where = "node information"
        elif tag:
            where = f"event {event_type} ({tag})"
        else:
            where = f"event {event_type}"
        super().__init__(f"{where} field {field}: {reason}")


class Bad(Exception):
    """Internal: raised inside decoders, turned into DecodeError by the caller who knows the event."""

    __slots__ = ("reason", "field")

    def __init__(self, reason: str, field: str | None = None) -> None:
        self.reason = reason
        self.field = field
