"""Every private or internal Flower name fedlean uses, behind one seam.

Flower's public API (``flwr.app``, ``flwr.serverapp``, ``flwr.clientapp``,
``flwr.serverapp.strategy``) is imported directly everywhere. What fedlean needs beyond
it (object serialization for measured bytes, the sender identity of messages built
outside a runtime, the message id a SuperLink would assign, the simulation engine's
polling loop, constants, the version) is imported or reached here only, so that a
Flower upgrade breaks one module and ``tests/test_flwr_compat.py`` says which name.

Tested with :data:`TESTED_FLWR` (``pyproject.toml`` pins the same range). Names that
need the simulation extra (Ray) are imported when first used.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from flwr.app import Message
from flwr.app.message.arraychunk import ArrayChunk
from flwr.common.constant import FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE, SUPERLINK_NODE_ID, ErrorCode
from flwr.proto.node_pb2 import NodeInfo
from flwr.serverapp.strategy.fedtrimmedavg import trim_mean
from flwr.serverapp.strategy.multikrum import select_multikrum
from flwr.serverapp.strategy.strategy_utils import log_strategy_start_info
from flwr.supercore import log
from flwr.supercore.constant import HEAD_BODY_DIVIDER, HEAD_VALUE_DIVIDER
from flwr.supercore.inflatable.inflatable_object import (
    get_all_nested_objects,
    no_object_id_recompute,
)
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.supercore.version import package_version

#: The Flower versions this module was tested with (as a pip specifier).
TESTED_FLWR = ">=1.42,<1.43"
#: Bytes per serialized chunk of an Array's data (Flower splits larger data into chunks
#: and sends identical chunks once).
ARRAY_CHUNK_SIZE: int = FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE
#: Installed Flower version.
FLWR_VERSION: str = package_version
#: Error code of a reply whose ClientApp raised.
CLIENT_APP_ERROR_CODE: int = ErrorCode.CLIENT_APP_RAISED_EXCEPTION
#: Error code of a reply for a message whose destination node does not exist.
NODE_UNAVAILABLE_ERROR_CODE: int = ErrorCode.NODE_UNAVAILABLE
#: Error codes of the replies a SuperLink makes up for a message no node answered:
#: the node stopped heartbeating, or the message or its reply expired (TTL).
LOST_NODE_ERROR_CODES: frozenset[int] = frozenset(
    {ErrorCode.NODE_UNAVAILABLE, ErrorCode.MESSAGE_UNAVAILABLE, ErrorCode.REPLY_MESSAGE_UNAVAILABLE}
)

__all__ = [
    "ARRAY_CHUNK_SIZE",
    "CLIENT_APP_ERROR_CODE",
    "FLWR_VERSION",
    "LOST_NODE_ERROR_CODES",
    "NODE_UNAVAILABLE_ERROR_CODE",
    "SUPERLINK_NODE_ID",
    "TESTED_FLWR",
    "NodeInfo",
    "Run",
    "inflate_message",
    "is_valid_app_name",
    "log",
    "deflated_size",
    "log_strategy_start_info",
    "nested_objects",
    "no_object_id_recompute",
    "pending_destinations",
    "run_simulation",
    "select_multikrum",
    "serve_clientapp_tasks",
    "set_message_id",
    "set_task_identity",
    "shorten_engine_polling",
    "trim_mean",
]

# The simulation engine's polling function that :func:`shorten_engine_polling` replaces.
ENGINE_POLL_PARAMETERS = ["state", "queue", "nodes_mapping", "f_stop"]


def nested_objects(obj: Any) -> Mapping[str, Any]:
    """Flower's serializable objects of a message or record, by object id.

    Each value's ``deflate()`` is the bytes Flower puts on the wire for it. Call inside
    :func:`no_object_id_recompute`, or Flower re-hashes every nested object once per
    ancestor.
    """
    return get_all_nested_objects(obj)


def deflated_size(obj: Any) -> int:
    """``len(obj.deflate())`` of an object from :func:`nested_objects`.

    An ``ArrayChunk``'s deflated form is a header (class name, no children, body
    length) and its data: its size is computed without copying the data into it.
    """
    if type(obj) is ArrayChunk:
        body = obj.data.nbytes if isinstance(obj.data, memoryview) else len(obj.data)
        head = f"{ArrayChunk.__qualname__}{HEAD_VALUE_DIVIDER}{HEAD_VALUE_DIVIDER}{body}"
        return len(head.encode("utf-8")) + len(HEAD_BODY_DIVIDER) + body
    return len(obj.deflate())


def inflate_message(object_id: str, contents: Mapping[str, bytes]) -> Message:
    """Rebuild a message from its serialized objects (object id -> deflated bytes)."""
    message = inflate_object_from_contents(object_id, dict(contents))
    if not isinstance(message, Message):
        raise TypeError(f"object {object_id} inflates to {type(message).__name__}, not Message")
    return message


def set_message_id(message: Message, message_id: str) -> None:
    """Give a message the id a SuperLink would assign (Flower exposes no setter)."""
    message.metadata.__dict__["_message_id"] = message_id


def set_task_identity(run_id: int, node_id: int = SUPERLINK_NODE_ID, task_id: int = 1) -> None:
    """Set the sender identity that messages built outside a Flower runtime read."""
    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = node_id
    TaskIdentity.task_id = task_id


def shorten_engine_polling(interval: float) -> bool:
    """Make Flower's simulation engine look for new messages every ``interval`` s.

    Flower's engine (``vce_api.add_messages_to_queue``) polls its LinkState with a
    hard-coded 0.1 s sleep, i.e. about 50 ms of idle latency per exchange, which
    dominates rounds of small models. This swaps in the same loop with a shorter
    wait. If Flower's function no longer has the expected signature, nothing is
    changed and ``False`` is returned.
    """
    from flwr.server.superlink.fleet.vce import vce_api

    original = vce_api.add_messages_to_queue
    if list(inspect.signature(original).parameters) != ENGINE_POLL_PARAMETERS:
        return False

    def add_messages_to_queue(state: Any, queue: Any, nodes_mapping: Any, f_stop: Any) -> None:
        while not f_stop.is_set():
            for node_id in pending_destinations(state, nodes_mapping):
                for message in state.get_message_ins(node_id=node_id, limit=1):
                    queue.put(message)
            f_stop.wait(interval)

    vce_api.add_messages_to_queue = add_messages_to_queue
    return True


def pending_destinations(state: Any, nodes: Any) -> Any:
    """The node ids that may have undelivered messages in ``state``, among ``nodes``.

    Flower's engine asks its LinkState for each of the population's nodes at every poll,
    and the in-memory LinkState scans all its stored messages for each ask: the cost of a
    poll grows with ``num_clients``. When ``state`` is Flower's in-memory LinkState, this
    reads the destinations of its stored, undelivered messages once (a scan of the
    messages in flight, i.e. of the clients sampled); any other state gets every node.
    """
    store = getattr(state, "message_ins_store", None)
    lock = getattr(state, "lock", None)
    if not isinstance(store, dict) or lock is None:
        return list(nodes.keys())
    with lock:
        waiting = {m.metadata.dst_node_id for m in store.values() if m.metadata.delivered_at == ""}
    return [node_id for node_id in waiting if node_id in nodes]


def is_valid_app_name(name: str) -> bool:
    """Whether ``flwr build`` accepts ``name`` as an app directory name."""
    from flwr.cli.utils import is_valid_name

    return bool(is_valid_name(name)[0])


def run_simulation(**kwargs: Any) -> None:
    """Flower's ``flwr.simulation.run_simulation`` (deprecated by Flower, still working).

    Parameters
    ----------
    **kwargs
        Passed on: ``server_app``, ``client_app``, ``num_supernodes``,
        ``backend_name``, ``backend_config``, ``verbose_logging``.

    """
    from flwr.simulation import run_simulation as flower_run_simulation

    flower_run_simulation(**kwargs)


# ----------------------------------------------------------------- SuperNode side
#: Flower's task type of ClientApp executions (what ``flwr-clientapp`` serves).
CLIENT_APP_TASK_TYPE = "flwr-clientapp"


def serve_clientapp_tasks(
    runtime_api_address: str,
    client_app: Any,
    *,
    insecure: bool = True,
    root_certificates: bytes | None = None,
    poll_interval: float = 0.02,
    max_tasks: int | None = None,
) -> int:
    """Run a SuperNode's ClientApp tasks in this process, one after the other, until stopped.

    What ``flower-superexec`` + one ``flwr-clientapp`` process per task do, for a SuperNode
    started with ``--isolation process``: acquire a ``flwr-clientapp`` task from the
    SuperNode's Runtime API every ``poll_interval`` s, pull its message and context,
    call ``client_app``, push the reply (an error reply if it raised) and the updated
    context. Unlike ``flwr-clientapp``, the app is the one imported here (the FAB's code
    is not installed), so imports, data and model caches live as long as this process.

    Parameters
    ----------
    runtime_api_address : str
        The SuperNode's Runtime API (``flower-supernode --port``), e.g. ``127.0.0.1:9094``.
    client_app : ClientApp
        Called as ``client_app(message=..., context=...)``.
    insecure : bool (default: True)
        Plain HTTP to the Runtime API (it listens on 127.0.0.1 by default).
    root_certificates : bytes | None (default: None)
        PEM CA for a TLS Runtime API.
    poll_interval : float (default: 0.02)
        Seconds between task polls while idle.
    max_tasks : int | None (default: None)
        Return after this many tasks (tests); ``None``: serve forever.

    Returns
    -------
    int
        Number of tasks served.

    """
    import functools
    import time

    from flwr.app import Error
    from flwr.common.constant import SubStatus
    from flwr.proto.runtime_pb2 import AcquireTaskRequest, SendTaskHeartbeatRequest
    from flwr.supercore.heartbeat import HeartbeatSender
    from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient
    from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

    def connect(*interceptors: Any) -> Any:
        return RuntimeHttpClient.from_server_address(
            server_address=runtime_api_address,
            insecure=insecure,
            root_certificates=root_certificates,
            interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"), *interceptors],
            retry_invoker=make_simple_http_retry_invoker(),
        )

    acquirer = connect()
    request = AcquireTaskRequest(supported_task_types=[CLIENT_APP_TASK_TYPE])
    served = 0
    try:
        while max_tasks is None or served < max_tasks:
            acquired = acquirer.AcquireTask(request)
            if not (acquired.HasField("task") and acquired.token):
                time.sleep(poll_interval)
                continue
            task_client = connect(RuntimeTokenHttpInterceptor(acquired.token))
            # Without heartbeats the SuperNode declares a long task lost; a refused
            # heartbeat (task stopped) is ignored: flwr-clientapp exits, this process serves on.
            beat = functools.partial(_heartbeat, task_client, SendTaskHeartbeatRequest())
            heartbeat = HeartbeatSender(beat)
            heartbeat.start()
            message = context = reply = None
            status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
            try:
                message, context, _run, _fab = pull_task_input(task_client)
                reply = client_app(message=message, context=context)
                status, details = SubStatus.COMPLETED, ""
            except Exception as exc:  # noqa: BLE001 - a failing app becomes an error reply
                log(40, "ClientApp raised an exception", exc_info=exc)
                details = f"{type(exc)}:<'{exc}'>"
                if message is not None:
                    reply = Message(Error(CLIENT_APP_ERROR_CODE, details), reply_to=message)
            finally:
                try:
                    if reply is not None and context is not None:
                        push_message(task_client, reply, context)
                    push_task_output(task_client, context, status, details)
                except Exception as exc:  # noqa: BLE001 - e.g. the run was stopped meanwhile
                    log(40, "Failed to push the task's reply", exc_info=exc)
                finally:
                    heartbeat.stop()
                    task_client.close()
            served += 1
    finally:
        acquirer.close()
    return served


def _heartbeat(client: Any, request: Any) -> bool:
    """One task heartbeat; ``False`` (retry) on a transport error, like Flower's sender."""
    import httpx

    try:
        client.SendTaskHeartbeat(request)
    except httpx.TransportError:
        return False
    return True
