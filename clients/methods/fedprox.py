"""FedProx's client: FedAvg plus the proximal term."""

from __future__ import annotations

from fl_strategies.fedprox import PROXIMAL_MU_KEY

from ..train import TrainHooks, proximal_term
from .base import ClientJob, ClientMethod


class FedProxClient(ClientMethod):
    """Adds ``mu/2 * ||w - w_global||^2`` (``mu`` from the server's message)."""

    name = "fedprox"

    def train_hooks(self, job: ClientJob) -> TrainHooks:
        """Proximal term around the global model just received."""
        mu = float(job.config.get(PROXIMAL_MU_KEY, 0.0))
        global_params = {n: p.detach().clone().to(job.device) for n, p in job.model.named_parameters()}
        hooks = TrainHooks()
        if mu > 0:
            hooks.loss_terms.append(proximal_term(global_params, mu))
        return hooks
