"""Measured bytes on the wire and the message keys of fedlean's protocol.

A message's size is what Flower itself serializes: the sum of the ``deflate()``
sizes of the message and every object nested in it (records, arrays, chunks).
That sum matched the SuperLink's traffic counter within 0.01% (see DESIGN.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from flwr.app import Message

from .flwr_compat import (
    deflated_size,
    inflate_message,
    nested_objects,
    no_object_id_recompute,
    set_message_id,
)

# Record keys (hyphenated, as in Flower's own strategies).
ARRAYS_KEY = "arrays"
CONFIG_KEY = "config"
METRICS_KEY = "metrics"
# ConfigRecord entry holding the client-side run settings (JSON), so that clients
# need no Hydra: everything they must know travels in the message.
RUN_CONFIG_KEY = "fedlean-run"
NUM_EXAMPLES_KEY = "num-examples"


def serialize_message(message: Message) -> dict[str, bytes]:
    """Flower's serialized form of a message: object id -> deflated bytes."""
    # Without this context Flower re-hashes every nested object once per ancestor.
    with no_object_id_recompute():
        return {oid: obj.deflate() for oid, obj in nested_objects(message).items()}


def message_bytes(message: Message) -> int:
    """Serialized size of a message in bytes, as Flower puts it on the wire."""
    return messages_bytes([message])


def messages_bytes(messages: Iterable[Message], known_sizes: Mapping[str, int] | None = None) -> int:
    """Total serialized size of several messages, each counted in full.

    Every message is counted with all its objects (each destination node receives
    them all); objects shared between messages, such as one round's model sent to
    every node, are serialized only once to compute their size. ``known_sizes``
    (object id -> serialized size) holds objects measured before, not serialized again.
    """
    sizes: dict[str, int] = dict(known_sizes or {})
    total = 0
    with no_object_id_recompute():
        for message in messages:
            for oid, obj in nested_objects(message).items():
                if oid not in sizes:
                    sizes[oid] = deflated_size(obj)
                total += sizes[oid]
    return total


def wire_copy(message: Message) -> tuple[Message, int]:
    """Send a message through Flower's serialization and back.

    Used by the in-process runtime so that sender and receiver never share
    objects, exactly as over a network.

    Returns
    -------
    tuple[Message, int]
        The inflated copy and its serialized size in bytes.
    """
    contents = serialize_message(message)
    size = sum(len(blob) for blob in contents.values())
    copy = inflate_message(message.object_id, contents)
    # The message id is excluded from serialization (the SuperLink assigns it).
    set_message_id(copy, message.metadata.message_id)
    return copy, size
