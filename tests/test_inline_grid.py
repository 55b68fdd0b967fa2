"""The inline Grid's timed delivery: one worker per push, a deadline per call, reused threads."""

from __future__ import annotations

import threading
import time

from flwr.app import ConfigRecord, Message, RecordDict

from simulations.runtimes.inline import InlineGrid


def sleeper_app(sleeps: dict[int, float], calls: list[int] | None = None):
    """A ClientApp whose node ``i`` (partition id) sleeps ``sleeps[i]`` s when the message asks it to."""

    def app(message: Message, context) -> Message:
        if calls is not None:
            calls.append(context.node_id)
        if message.content.config_records["c"]["sleep"]:
            time.sleep(sleeps.get(int(context.node_config["partition-id"]), 0.0))
        return Message(RecordDict({"c": ConfigRecord({"node": context.node_id})}), reply_to=message)

    return app


def push(grid: InlineGrid, sleep: bool, timeout: float | None) -> list[int]:
    messages = [
        Message(RecordDict({"c": ConfigRecord({"sleep": sleep})}), dst_node_id=n, message_type="train")
        for n in grid.node_ids
    ]
    replies = grid.send_and_receive(messages, timeout=timeout)
    return sorted(int(r.content.config_records["c"]["node"]) for r in replies)


def test_each_call_gets_the_timeout_from_its_own_start():
    # Three calls of 0.3 s, one after another, with timeout 0.5: 0.9 s in all, yet
    # every call ends within its own 0.5 s.
    calls: list[int] = []
    grid = InlineGrid(sleeper_app({0: 0.3, 1: 0.3, 2: 0.3}, calls), 3)
    assert push(grid, sleep=True, timeout=0.5) == grid.node_ids
    assert calls == grid.node_ids  # each node called once, in order


def test_a_call_past_its_deadline_is_left_behind_and_its_node_stays_busy_until_it_ends():
    grid = InlineGrid(sleeper_app({1: 0.8}), 3)
    start = time.monotonic()
    assert push(grid, sleep=True, timeout=0.2) == [1000, 1002]  # node 1001 timed out
    assert time.monotonic() - start < 0.6  # node 1002 did not wait for 1001's call to end
    assert push(grid, sleep=False, timeout=0.2) == [1000, 1002]  # 1001 still busy
    time.sleep(0.8)
    assert push(grid, sleep=False, timeout=0.2) == grid.node_ids
    assert push(grid, sleep=False, timeout=None) == grid.node_ids


def test_worker_threads_are_reused_across_pushes_and_grids():
    before = threading.active_count()
    for _ in range(3):
        grid = InlineGrid(sleeper_app({}), 4)
        for _ in range(5):
            assert push(grid, sleep=False, timeout=5.0) == grid.node_ids
    assert threading.active_count() <= before + 1
