"""Device data: one partition of a run's dataset as the ``.npz`` file a device reads."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def export_partition(
    path: str | Path,
    partition_id: int,
    num_partitions: int,
    overrides: Sequence[str] = (),
) -> Path:
    """Save one client partition (train + local test) as a device's ``.npz`` file.

    The file holds ``x`` (float32 images in [0, 1], ``N x C x H x W``) and ``y``
    (int64 labels), the format :func:`clients.data.load_local_data` reads. The
    partition is the one a simulation with the same ``overrides`` gives client
    ``partition_id``; a device normalizes it again like the run's dataset.
    """
    import numpy as np
    import torch

    from clients.data import get_spec, load_partition
    from simulations.app.compose import client_settings, to_dict
    from simulations.app.server_app import compose_config

    cfg = to_dict(compose_config(list(overrides)))
    data_cfg = client_settings(cfg)["data"]
    train, test = load_partition(data_cfg, partition_id, num_partitions)
    x = torch.cat([train.tensors[0], test.tensors[0]])
    y = torch.cat([train.tensors[1], test.tensors[1]])
    spec = get_spec(data_cfg["name"])
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    images = (x * std + mean).clamp_(0.0, 1.0)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, x=images.numpy().astype(np.float32), y=y.numpy().astype(np.int64))
    return out
