"""Client sides of the methods: one :class:`ClientMethod` subclass per module.

Which class serves which method is declared by the method's registry entry
(:mod:`methods`), not here.
"""

from __future__ import annotations

from .base import ClientJob, ClientMethod, load_arrays, model_arrays

__all__ = ["ClientJob", "ClientMethod", "load_arrays", "model_arrays"]
