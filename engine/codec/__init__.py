"""JIP-3 codec: node information and every event type, decoded to tart's JSON and encoded back.

One declarative table (schema.py) built from composable types (types.py) drives both directions.
"""

from .errors import DecodeError
from .events import EVENT_NAMES, EVENT_TYPES, Decoded, decode_event, encode_event, event_json, event_schema
from .eventtype import EventType
from .jce import JCE_EPOCH_UNIX_US, jce_to_datetime
from .natural import decode_natural, encode_natural
from .nodeinfo import NodeInfo, decode_node_info, encode_node_info
from .types import peer_address_text

__all__ = [
    "DecodeError",
    "Decoded",
    "EVENT_NAMES",
    "EVENT_TYPES",
    "EventType",
    "JCE_EPOCH_UNIX_US",
    "NodeInfo",
    "decode_event",
    "decode_natural",
    "decode_node_info",
    "encode_event",
    "encode_natural",
    "encode_node_info",
    "event_json",
    "event_schema",
    "jce_to_datetime",
    "peer_address_text",
]
