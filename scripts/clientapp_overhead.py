"""What a fresh ClientApp process costs per message in deployment (docs/deploy.md).

Flower's default (subprocess) isolation starts a new ``flwr-clientapp`` process for
every message, so per-process caches (dataset, partitions, model template) start
cold each time. This measures, in one fresh process, the import of the ClientApp,
a first (cold) train call and a second (warm) one, as CPU and wall seconds:

    python scripts/clientapp_overhead.py method=fedavg dataset=digits num_clients=2
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout


def _now() -> tuple[float, float]:
    return time.process_time(), time.perf_counter()


def _since(start: tuple[float, float]) -> dict[str, float]:
    cpu, wall = _now()
    return {"cpu_s": round(cpu - start[0], 3), "wall_s": round(wall - start[1], 3)}


def main(overrides: list[str]) -> dict[str, dict[str, float]]:
    """Time the import, a cold call and a warm call of the ClientApp in this process."""
    start = _now()
    from simulations.app.client_app import app

    result = {"import": _since(start)}
    from flwr.app import ConfigRecord

    from fl_strategies.wire import wire_copy
    from simulations.app.compose import compose_run
    from simulations.app.server_app import compose_config
    from simulations.runtimes.inline import InlineGrid

    cfg = compose_config([*overrides, "central_eval=false"])
    plan = compose_run(cfg, "/tmp/fedlean-overhead")
    grid = InlineGrid(app, int(plan.cfg["num_clients"]))
    message = list(plan.strategy.configure_train(1, plan.initial_arrays, ConfigRecord(), grid))[0]
    message.metadata.__dict__["_message_id"] = "m1"
    context = grid.contexts[message.metadata.dst_node_id]
    for name in ("cold_call", "warm_call"):
        received, _ = wire_copy(message)
        start = _now()
        app(received, context)
        result[name] = _since(start)
    return result


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=2))
