"""``backend=inline``: an in-process Grid that runs the same strategy and ClientApp.

No Ray, no SuperLink: the ClientApp is called directly with the node's persistent
Context. Each delivered message gets its own record containers (Array payloads are
immutable bytes), so neither side can change what the other holds. Message sizes
are measured by the strategy with Flower's own serialization
(:mod:`fl_strategies.wire`), as in any runtime; a full serialization round trip
per message here cost about 25x more than this copy. For small runs and tests.

Timeouts: with a ``timeout``, each ClientApp call runs in a worker thread and gets
``timeout`` seconds from its own start, as if every node had started on the push
(the nodes run one after another here, in parallel elsewhere). A call still running
then is left behind: its reply, whenever it comes, is discarded, so the node counts
as missing that round. Python cannot kill a thread, so the call runs on in the
background; until it ends its node is busy and a message to it gets no reply either.
The worker threads are kept and reused from call to call (starting a thread per
call cost about as much as a small model's client call does besides training); a
worker left behind joins the idle ones once its call ends.
"""

from __future__ import annotations

import copy
import itertools
import queue
import threading
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


class _Worker:
    """A daemon thread that runs the calls handed to it, one at a time, and is then reused.

    Daemon, as the thread per call was: a call that never ends must not keep the
    process from exiting. Once a call ends, the worker goes back to :data:`_IDLE`
    (before the call is marked done, so that the next call finds it there).
    """

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Message], _Call]] = queue.SimpleQueue()
        threading.Thread(target=self._serve, name=name, daemon=True).start()

    def _serve(self) -> None:
        while True:
            fn, call = self._jobs.get()
            try:
                call.reply = fn()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, which re-raises
                call.raised = exc
            finally:
                _IDLE.put(self)
                call.done.set()

    def submit(self, fn: Callable[[], Message]) -> _Call:
        """Run ``fn`` in this worker; the returned call says when it is done and what it gave."""
        call = _Call()
        self._jobs.put((fn, call))
        return call


class _Call:
    """One call handed to a :class:`_Worker`: its end, its reply or what it raised."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.reply: Message | None = None
        self.raised: BaseException | None = None


#: Workers free for a call, shared by every grid of the process (a timed-out call's
#: worker comes back here when the call ends, whether or not its grid still exists).
_IDLE: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
_worker_count = itertools.count(1)


def _idle_worker() -> _Worker:
    try:
        return _IDLE.get_nowait()
    except queue.Empty:
        return _Worker(f"inline-worker-{next(_worker_count)}")


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
        # Node id -> a call that outlived its timeout (its worker is busy until it ends).
        self._busy: dict[int, _Call] = {}
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

    def push_messages(self, messages: Iterable[Message], timeout: float | None = None) -> Iterable[str]:
        """Deliver each message to its node's ClientApp now; keep the reply if it came in time.

        ``timeout`` (seconds, per call; None: wait for every reply) is the deadline of
        each node's call, see the module notes.
        """
        ids = []
        for message in messages:
            set_message_id(message, uuid4().hex)
            ids.append(message.metadata.message_id)
            reply = self._deliver(isolated_copy(message), timeout)
            if reply is not None:
                set_message_id(reply, uuid4().hex)
                self._replies[message.metadata.message_id] = isolated_copy(reply)
        return ids

    def _deliver(self, message: Message, timeout: float | None) -> Message | None:
        """The node's reply, or None if the node is busy or its call outlives ``timeout``."""
        if timeout is None:
            return self._call_client(message)
        node_id = message.metadata.dst_node_id
        busy = self._busy.get(node_id)
        if busy is not None and not busy.done.is_set():
            return None  # still running a call that timed out earlier
        self._busy.pop(node_id, None)
        call = _idle_worker().submit(lambda: self._call_client(message))
        if not call.done.wait(timeout):
            self._busy[node_id] = call
            return None
        if call.raised is not None:
            raise call.raised
        return call.reply

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
        """Push and return the replies that came within ``timeout`` (clients run in order)."""
        return self.pull_messages(self.push_messages(messages, timeout))

    # ------------------------------------------------------------ checkpoints
    def checkpoint_state(self) -> dict[int, RecordDict]:
        """Each node's persistent state (its Context's ``state``), for a checkpoint."""
        return {node_id: context.state for node_id, context in self.contexts.items()}

    def load_checkpoint_state(self, states: dict[int, RecordDict]) -> None:
        """Give each node back the state :meth:`checkpoint_state` saved."""
        unknown = sorted(set(states) - set(self.contexts))
        if unknown:
            raise ValueError(f"checkpoint holds state of nodes {unknown[:3]} that this grid does not have")
        for node_id, state in states.items():
            self.contexts[node_id].state = state
