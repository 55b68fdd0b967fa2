"""The method registry: one entry per method, declaring everything generic code needs.

A :class:`MethodEntry` names the method's config schema (a :class:`MethodConfig`
dataclass holding its defaults -- the only place they are written), the builder of
its server-side strategy and its client-side class. Entries live one family per
module in this package (``methods/gwpf.py`` ...) and call :func:`register` at import;
:func:`get_method` imports every module of the package once, so adding a module here
is all it takes to add a method. Methods outside the repository are loaded by the run
key ``plugins`` (module names imported before the method is looked up, on the server
and on every client).
"""

from __future__ import annotations

import copy
import importlib
import pkgutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from omegaconf import MISSING

if TYPE_CHECKING:
    from torch import nn

    from clients.methods.base import ClientMethod
    from fl_strategies.base import FedleanStrategy


class ConfigError(ValueError):
    """A config value that cannot work; raised before any training starts.

    The message names the key and what is allowed, e.g.
    ``method.sparsity=1.5: must be in [0, 1)``.
    """


def require(ok: bool, key: str, value: Any, why: str) -> None:
    """Raise :class:`ConfigError` ``"<key>=<value>: <why>"`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key}={value!r}: {why}")


@dataclass
class MethodConfig:
    """Base of every method's config schema (``method.*``).

    Subclasses are dataclasses whose field defaults are the method's defaults;
    :meth:`check` holds the rules OmegaConf's types cannot express.
    """

    name: str = MISSING

    def check(self, run: Mapping[str, Any]) -> None:
        """Raise :class:`ConfigError` naming ``method.<key>`` for a value that cannot work.

        Parameters
        ----------
        run : Mapping[str, Any]
            The whole resolved run config, for rules that involve other sections
            (e.g. ``ft_rounds < num_rounds``).
        """


@dataclass
class BuildContext:
    """What a strategy builder gets besides its method config.

    Attributes
    ----------
    run : dict
        The resolved run config as plain containers.
    common : dict
        Keyword arguments every :class:`~fl_strategies.base.FedleanStrategy` takes
        (sampling, client settings, plausibility bounds).
    dims : dict
        The run's model name and input/output sizes (:func:`clients.models.model_dims`).
    """

    run: dict[str, Any]
    common: dict[str, Any]
    dims: dict[str, Any]
    _model: nn.Module | None = field(default=None, repr=False)

    def model(self) -> nn.Module:
        """The run's initial model, built once per composition (do not modify it)."""
        if self._model is None:
            from clients.models import build_from_dims

            self._model = build_from_dims(self.dims)
        return self._model

    def fresh_model(self) -> nn.Module:
        """A copy of :meth:`model` that the caller may change."""
        return copy.deepcopy(self.model())


StrategyBuilder = Callable[[Any, BuildContext], "FedleanStrategy"]


@dataclass(frozen=True)
class MethodEntry:
    """One method: its name, config schema, strategy builder and client class.

    Attributes
    ----------
    name : str
        ``method=<name>``; also the name of ``simulations/conf/method/<name>.yaml``.
    config : type[MethodConfig]
        The schema; its field defaults are the method's defaults.
    build : StrategyBuilder
        ``build(method_cfg, ctx) -> FedleanStrategy``; ``method_cfg`` is an instance
        of ``config``.
    client : type[ClientMethod] or Callable[[], type[ClientMethod]]
        The client-side class (or a zero-argument callable returning it, to keep a
        heavy import off the server).
    summary : str
        One line for listings.
    """

    name: str
    config: type[MethodConfig]
    build: StrategyBuilder
    client: Any
    summary: str = ""

    def client_class(self) -> type[ClientMethod]:
        """The client-side class, resolving a lazy reference."""
        from clients.methods.base import ClientMethod

        client = self.client
        if isinstance(client, type) and issubclass(client, ClientMethod):
            return client
        return client()


_REGISTRY: dict[str, MethodEntry] = {}
_DISCOVERED = False


def register(entry: MethodEntry) -> MethodEntry:
    """Add ``entry`` to the registry; a second entry of the same name is an error."""
    known = _REGISTRY.get(entry.name)
    if known is not None and known != entry:
        raise ValueError(
            f"method {entry.name!r} is registered twice "
            f"({known.config.__module__} and {entry.config.__module__})"
        )
    if entry.config.name is not MISSING and getattr(entry.config, "name", None) != entry.name:
        raise ValueError(f"method {entry.name!r}: its config's default name is {entry.config.name!r}")
    _REGISTRY[entry.name] = entry
    return entry


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    for module in pkgutil.iter_modules(_package_path()):
        if module.name != "registry" and not module.name.startswith("_"):
            importlib.import_module(f"{__package__}.{module.name}")


def _package_path() -> list[str]:
    return list(importlib.import_module(__package__).__path__)


def load_plugins(modules: Iterable[str]) -> None:
    """Import third-party modules that :func:`register` methods (the run key ``plugins``)."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"plugins={name!r}: cannot import it ({exc})") from None


def all_methods(plugins: Iterable[str] = ()) -> dict[str, MethodEntry]:
    """Every registered method by name (the package's own and ``plugins``')."""
    _discover()
    load_plugins(plugins)
    return dict(_REGISTRY)


def get_method(name: str, plugins: Iterable[str] = ()) -> MethodEntry:
    """The entry of method ``name``; :class:`ConfigError` lists the known ones."""
    methods = all_methods(plugins)
    if name not in methods:
        raise ConfigError(f"method.name={name!r}: unknown method; known: {sorted(methods)}")
    return methods[name]
