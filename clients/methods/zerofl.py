"""ZeroFL's client: SWAT training, then only part of the SWAT layers' weights goes up."""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord

from fl_strategies.codec import encode_arrays
from fl_strategies.zerofl import UPLINK_DENSITY_KEY, pack_sent, select_uplink, uplink_density

from ..train import LoopStats
from .base import ClientJob, model_arrays
from .swat import SwatClient


class ZeroFLClient(SwatClient):
    """SWAT client whose upload is sparse (``fl_strategies.zerofl`` defines the rules).

    Method settings on top of SWAT's: ``uplink`` (``topk_weights``,
    ``diff_topk_weights`` or ``topk_diff``) and ``mask_ratio``. The SWAT layers'
    weights are sent sparse; every other tensor (biases, BatchNorm) dense.
    """

    name = "zerofl"

    def receive(self, job: ClientJob) -> None:
        """Load the global model; the diff uplinks keep a copy of the SWAT layers' weights."""
        super().receive(job)
        self.global_arrays: dict[str, np.ndarray] = {}
        if str(self.method["uplink"]) != "topk_weights":
            # Only the sparsified tensors' updates are taken (topk_weights needs none).
            state = job.model.state_dict()
            self.global_arrays = {
                f"{name}.weight": state[f"{name}.weight"].detach().cpu().numpy().copy()
                for name in self.swat_names
            }
        self._payload: dict[str, np.ndarray] | None = None

    def uplink_payload(self, job: ClientJob) -> dict[str, np.ndarray]:
        """Sparse SWAT-layer weights (values + positions), everything else dense.

        Computed once per round (the base asks for metrics before arrays).
        """
        if getattr(self, "_payload", None) is not None:
            return self._payload
        local = model_arrays(job.model)
        density = uplink_density(float(self.method["sparsity"]), float(self.method["mask_ratio"]))
        uplink = str(self.method["uplink"])
        payload: dict[str, np.ndarray] = {}
        sent, total = 0, 0
        for key, value in local.items():
            module = key.rpartition(".")[0]
            if key.endswith(".weight") and module in self.swat_names:
                # topk_weights reads no global value (none is kept for it).
                reference = value if uplink == "topk_weights" else self.global_arrays[key]
                values, mask = select_uplink(value, reference, uplink, density)
                payload.update(pack_sent(key, values, mask))
                sent, total = sent + int(np.count_nonzero(mask)), total + mask.size
            else:
                payload[key] = value
        self.sent_fraction = sent / total if total else 1.0
        self._payload = payload
        return payload

    def reply_arrays(self, job: ClientJob, stats: LoopStats) -> ArrayRecord:
        """The uplink payload through the codec."""
        return encode_arrays(self.uplink_payload(job), encoding=self.settings.get("encoding", "auto"))

    def reply_metrics(self, job: ClientJob, stats: LoopStats) -> dict[str, float | int]:
        """SWAT's FLOPs and the fraction of the sparsified positions sent."""
        metrics = super().reply_metrics(job, stats)
        self.uplink_payload(job)
        metrics[UPLINK_DENSITY_KEY] = float(self.sent_fraction)
        return metrics
