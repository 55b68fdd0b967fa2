"""fedlean model zoo.

Build any model by name with :func:`build_model`; :data:`MODEL_NAMES` lists
the registered names and :func:`count_params` counts trainable parameters.
Every model takes ``N x C x H x W`` float tensors and returns logits, except
the FedGKT edge model ``resnet8_56`` which returns ``(logits, features)``.
"""

from .registry import MODEL_NAMES, build_from_dims, build_model, count_params, model_dims

__all__ = ["MODEL_NAMES", "build_from_dims", "build_model", "count_params", "model_dims"]
