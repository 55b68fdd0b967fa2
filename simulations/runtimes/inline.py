"""``backend=inline``: an in-process Grid that runs the same strategy and ClientApp.

No Ray, no SuperLink: the ClientApp is called directly with the node's persistent
Context. Each delivered message gets its own record containers (Array payloads are
immutable bytes), so neither side can change what the other holds. Message sizes
are measured by the strategy with Flower's own serialization
(:mod:`fl_strategies.wire`), as in any runtime; a full serialization round trip
per message here cost about 25x more than this copy. For small runs and tests.
"""

from __future__ import annotations

import copy
import traceback
from collections.abc import Callable, Iterable
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid

from fl_strategies.flwr_compat import (
    CLIENT_APP_ERROR_CODE,
    NODE_UNAVAILABLE_ERROR_CODE,
    Run,
    set_message_id,
    set_task_identity,
)

ClientCallable = Callable[[Message, Context], Message]


def isolated_copy(message: Message) -> Message:
    """A copy of a message with its own metadata and record containers."""
    metadata = copy.copy(message.metadata)
    if message.has_error():
        return Message(metadata=metadata, error=message.error)
    content = RecordDict({key: type(record)(dict(record.items())) for key, record in message.content.items()})
    return Message(metadata=metadata, content=content)


class InlineGrid(Grid):
    """A Grid whose nodes are ClientApp calls in this process.

    Parameters
    ----------
    client_app : Callable[[Message, Context], Message]
        The ClientApp (or any callable with its signature).
    num_nodes : int
        Number of virtual nodes; node ``i`` gets ``partition-id=i``.
    run_id : int (default: 1)
        Run id stamped on messages.
    """

    def __init__(self, client_app: ClientCallable, num_nodes: int, run_id: int = 1) -> None:
        self.client_app = client_app
        self._run = Run.create_empty(run_id)
        self.node_ids = [1000 + i for i in range(num_nodes)]
        self.contexts = {
            node_id: Context(
                run_id=run_id,
                node_id=node_id,
                node_config={"partition-id": i, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config={},
            )
            for i, node_id in enumerate(self.node_ids)
        }
        self._replies: dict[str, Message] = {}
        # Messages built by strategies read the sender's identity from here.
        set_task_identity(run_id)

    def set_run(self, run: Run) -> None:
        """Set the run (kept for the Grid interface)."""
        self._run = run

    @property
    def run(self) -> Run:
        """The current run."""
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """Build a message (deprecated in Flower; kept for the Grid interface)."""
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        """All virtual node ids."""
        return list(self.node_ids)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Deliver each message to its node's ClientApp now; keep the reply."""
        ids = []
        for message in messages:
            set_message_id(message, uuid4().hex)
            reply = self._call_client(isolated_copy(message))
            set_message_id(reply, uuid4().hex)
            self._replies[message.metadata.message_id] = isolated_copy(reply)
            ids.append(message.metadata.message_id)
        return ids

    def _call_client(self, message: Message) -> Message:
        context = self.contexts.get(message.metadata.dst_node_id)
        if context is None:
            return Message(
                Error(NODE_UNAVAILABLE_ERROR_CODE, f"unknown node {message.metadata.dst_node_id}"),
                reply_to=message,
            )
        try:
            return self.client_app(message, context)
        except Exception as exc:  # noqa: BLE001 - a failing client becomes an error reply
            reason = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"
            return Message(Error(CLIENT_APP_ERROR_CODE, reason), reply_to=message)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Replies for the given message ids (each returned once)."""
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push and return all replies (clients run synchronously, in order)."""
        return self.pull_messages(self.push_messages(messages))
