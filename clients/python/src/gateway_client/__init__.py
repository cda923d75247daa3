"""Python client of the WebSocket gateway (wire protocol v1).

Reconnects with full-jitter backoff, honours the gateway's ``after_ms`` and ``reconnect:false``,
resumes with the resume token and every topic's ``{seq, epoch}`` position, drops duplicates by
``seq``, reports every possible loss as a ``Gap``, and refreshes tokens through ``get_token``.
"""

from .client import GatewayClient
from .events import (Backoff, Connected, Disconnected, Duplicate, ErrorEvent, Event,
                     GatewayError, PresenceChange, PresenceList, Reconnecting, Refreshed, Stopped,
                     Unsubscribed, parse_close_reason, token_expiry)
from .queries import HistoryMessage, HistoryPage, PresenceMember, PresenceStats
from .subscription import Subscription
from .topics import Gap, Message, Position

PROTOCOL_VERSION = 1

__all__ = [
    "PROTOCOL_VERSION", "Backoff", "Connected", "Disconnected", "Duplicate", "ErrorEvent",
    "Event", "Gap", "GatewayClient", "GatewayError", "HistoryMessage", "HistoryPage", "Message",
    "Position", "PresenceChange", "PresenceList", "PresenceMember", "PresenceStats", "Reconnecting", "Refreshed", "Stopped",
    "Subscription", "Unsubscribed", "parse_close_reason", "token_expiry",
]
