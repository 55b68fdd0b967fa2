"""A test plug-in method: FedAvg whose chosen clients sleep before training (``tests/test_missing.py``).

``method.sleep_partitions`` lists the partition ids that sleep ``method.sleep_seconds``
in the rounds of ``method.sleep_rounds`` (empty: every round), so that their replies
come after the run's ``timeout``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from flwr.app import RecordDict

from clients.methods.base import ClientJob, ClientMethod
from fl_strategies import FedAvg
from methods import MethodConfig, MethodEntry, register


@dataclass
class SleepyConfig(MethodConfig):
    """FedAvg with sleeping clients."""

    name: str = "sleepy_fedavg"
    sleep_seconds: float = 0.0
    sleep_partitions: list[int] = field(default_factory=list)
    sleep_rounds: list[int] = field(default_factory=list)


class SleepyClient(ClientMethod):
    """Sleeps first where the method settings say so, then trains as FedAvg."""

    def train(self, job: ClientJob) -> RecordDict:  # noqa: D102
        method = job.settings["method"]
        rounds = method["sleep_rounds"]
        if job.partition_id in method["sleep_partitions"] and (not rounds or job.server_round in rounds):
            time.sleep(float(method["sleep_seconds"]))
        return super().train(job)


register(
    MethodEntry(
        name="sleepy_fedavg",
        config=SleepyConfig,
        client=SleepyClient,
        summary="FedAvg with clients that sleep (tests only)",
        build=lambda cfg, ctx: FedAvg(**ctx.common),
    )
)
