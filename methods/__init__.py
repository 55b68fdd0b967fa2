"""Method registry: each module of this package registers one method family.

See :mod:`methods.registry`; ``docs/architecture.md`` shows how to add a method.
"""

from .registry import (
    BuildContext,
    ConfigError,
    MethodConfig,
    MethodEntry,
    all_methods,
    get_method,
    load_plugins,
    register,
    require,
)

__all__ = [
    "BuildContext",
    "ConfigError",
    "MethodConfig",
    "MethodEntry",
    "all_methods",
    "get_method",
    "load_plugins",
    "register",
    "require",
]
