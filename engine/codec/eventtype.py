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
