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
The calls of one push run one after another in one worker thread, which marks each
call's start; the pushing thread sleeps until the running call's deadline and is
woken once, when the last call is done (a thread, or a wake-up, per call cost
several milliseconds a round on a busy machine). A call past its deadline is left
to its worker, and the calls after it go on in another one. Workers are kept and
reused; one left behind joins the idle ones once its call ends.
"""

from __future__ import annotations

import copy
import itertools
import queue
import threading
import time
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
    """A daemon thread that runs the jobs handed to it, one at a time, and is then reused.

    Daemon, as the thread per call was: a call that never ends must not keep the
    process from exiting. Once a job ends, the worker goes back to :data:`_IDLE`.
    """

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        threading.Thread(target=self._serve, name=name, daemon=True).start()

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                job()
            finally:
                _IDLE.put(self)

    def submit(self, job: Callable[[], None]) -> None:
        """Run ``job`` (which handles its own errors) in this worker."""
        self._jobs.put(job)


#: Workers free for a job, shared by every grid of the process (a worker left with a
#: timed-out call comes back here when the call ends, whether or not its grid still exists).
_IDLE: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
_worker_count = itertools.count(1)


def _idle_worker() -> _Worker:
    try:
        return _IDLE.get_nowait()
    except queue.Empty:
        return _Worker(f"inline-worker-{next(_worker_count)}")


class _Lease:
    """A worker's hold on a :class:`_Sequence`; revoked when its current call times out."""

    def __init__(self) -> None:
        self.revoked = False
        self.ended = threading.Event()  # the worker has left the sequence (its last call returned)


class _Sequence:
    """The calls of one push, run one after another in a worker, each with its own deadline.

    The worker marks each call's start in :attr:`current`; the pushing thread sleeps
    until the deadline of the call running then (or the end) and is woken once, when
    the last call is done. A call past its deadline is left to its worker; the calls
    after it go on in another worker.
    """

    def __init__(self, grid: InlineGrid, messages: list[Message]) -> None:
        self.grid = grid
        self.messages = messages
        self.cond = threading.Condition()
        self.replies: dict[int, Message] = {}
        self.current: tuple[int, float, _Lease] = (0, time.monotonic(), _Lease())
        self.finished = not messages
        self.raised: BaseException | None = None

    def start(self, index: int, lease: _Lease) -> None:
        """Run the calls from ``index`` on in an idle worker (call with :attr:`cond` held)."""
        self.current = (index, time.monotonic(), lease)
        _idle_worker().submit(lambda: self._serve(index, lease))

    def _serve(self, index: int, lease: _Lease) -> None:
        try:
            for i in range(index, len(self.messages)):
                with self.cond:
                    if lease.revoked:
                        return
                    self.current = (i, time.monotonic(), lease)
                reply = self.grid._deliver(self.messages[i])
                with self.cond:
                    if lease.revoked:
                        return  # this call outlived its timeout: its reply is discarded
                    if reply is not None:
                        self.replies[i] = reply
            with self.cond:
                self.finished = True
                self.cond.notify_all()
        except BaseException as exc:  # noqa: BLE001 - handed to the pushing thread, which re-raises
            with self.cond:
                if not lease.revoked:
                    self.raised, self.finished = exc, True
                    self.cond.notify_all()
        finally:
            lease.ended.set()

    def wait(self, timeout: float) -> None:
        """Until every call is done or left behind (call with :attr:`cond` held)."""
        while not self.finished:
            index, started, lease = self.current
            remaining = started + timeout - time.monotonic()
            if remaining > 0:
                self.cond.wait(remaining)
                continue
            lease.revoked = True
            self.grid._busy[self.messages[index].metadata.dst_node_id] = lease
            if index + 1 < len(self.messages):
                self.start(index + 1, _Lease())
            else:
                self.finished = True


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
        # Node id -> the lease of a call that outlived its timeout (busy until it ends).
        self._busy: dict[int, _Lease] = {}
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
        messages = list(messages)
        for message in messages:
            set_message_id(message, uuid4().hex)
        if timeout is None:
            replies = {i: self._deliver(message) for i, message in enumerate(messages)}
        else:
            sequence = _Sequence(self, messages)
            with sequence.cond:
                if messages:
                    sequence.start(0, _Lease())
                sequence.wait(timeout)
            if sequence.raised is not None:
                raise sequence.raised
            replies = sequence.replies
        for i, message in enumerate(messages):
            reply = replies.get(i)
            if reply is not None:
                self._replies[message.metadata.message_id] = reply
        return [message.metadata.message_id for message in messages]

    def _deliver(self, message: Message) -> Message | None:
        """The node's (isolated) reply to a copy of ``message``; None while the node is busy."""
        node_id = message.metadata.dst_node_id
        busy = self._busy.get(node_id)
        if busy is not None:
            if not busy.ended.is_set():
                return None  # still running a call that timed out earlier
            self._busy.pop(node_id, None)
        reply = self._call_client(isolated_copy(message))
        set_message_id(reply, uuid4().hex)
        return isolated_copy(reply)

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
