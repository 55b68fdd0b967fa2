"""A fedlean plugin for tests/test_faults.py: FedAvg whose partition-0 client sends NaN ``num-examples``.

A plugin (the run key ``plugins``) is imported wherever the ClientApp runs, Ray actors
included, so the fault reaches the server through the real runtime.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from flwr.app import RecordDict

from clients.methods.base import ClientJob, ClientMethod
from fl_strategies import FedAvg
from fl_strategies.wire import METRICS_KEY, NUM_EXAMPLES_KEY
from methods.registry import MethodConfig, MethodEntry, register

NAME = "fedavg_nan_node"


@dataclass
class NanNodeConfig(MethodConfig):
    """FedAvg; the client of partition 0 reports ``num-examples`` NaN."""

    name: str = NAME


class NanNodeClient(ClientMethod):
    """FedAvg's client; on partition 0 the reply's ``num-examples`` is NaN."""

    def train(self, job: ClientJob) -> RecordDict:  # noqa: D102
        content = super().train(job)
        if job.partition_id == 0:
            content.metric_records[METRICS_KEY][NUM_EXAMPLES_KEY] = math.nan
        return content


register(
    MethodEntry(
        name=NAME,
        config=NanNodeConfig,
        client=NanNodeClient,
        summary="FedAvg with a NaN num-examples client (fault-injection tests)",
        build=lambda cfg, ctx: FedAvg(**ctx.common),
    )
)
