"""``EventType``: every JIP-3 discriminator by its JSON tag, generated from the schema table.

Code that singles out an event type (the Dropped layout, the derived tables, the console) spells
it ``EventType.BestBlockChanged`` rather than ``11``; the table in schema.py stays the only place
where the numbers are written.
"""

from __future__ import annotations

from enum import IntEnum

from .schema import EVENTS

EventType = IntEnum("EventType", {tag: et for et, (tag, _) in sorted(EVENTS.items())})
EventType.__doc__ = "JIP-3 event discriminators, named by their JSON tag (EVENTS-JSON.md)."

# JIP-3's sections: (first discriminator, group name). A type belongs to the last group that
# starts at or below it.
GROUPS: tuple[tuple[int, str], ...] = (
    (0, "Meta"), (10, "Status"), (20, "Networking"), (40, "Block authoring/importing"),
    (60, "Block distribution"), (80, "Safrole tickets"), (90, "Guaranteeing"),
    (120, "Availability distribution"), (140, "Bundle recovery"), (160, "Segment recovery"),
    (190, "Preimage distribution"),
)


def event_group(event_type: int) -> str:
    name = GROUPS[0][1]
    for first, group in GROUPS:
        if event_type >= first:
            name = group
    return name
