"""The protocol a family of problems implements for the planning engine."""

from __future__ import annotations

from typing import Any, Callable, Generic, Protocol, TypeVar

import torch

from .cost import Constants, constant_names, is_wide, seconds

Run = Callable[..., torch.Tensor]


class Family(Protocol):
    """What the engine needs of a family of problems."""

    @property
    def name(self) -> str:
        """The family's name in tuning files and profiles."""
        ...

    @property
    def spec_type(self) -> type:
        """The class of its validated problems (its specs)."""
        ...

    @property
    def key_type(self) -> type:
        """The named tuple of its keys."""
        ...

    def key(self, spec: Any, grad: bool) -> tuple:
        """The key of ``spec``'s problem (with whether a backward pass follows)."""
        ...

    def options(self, spec: Any, grad: bool) -> list[str]:
        """The options the hard constraints allow, in order of preference among equals."""
        ...

    def methods(self) -> tuple[str, ...]:
        """Every method a caller may name (``"auto"`` first)."""
        ...

    def option_names(self) -> tuple[str, ...]:
        """Every option a decision may give (the methods, and options such as running each pass
        on its own method)."""
        ...

    def estimate(self, spec: Any, grad: bool, constants: Constants) -> dict[str, float]:
        """Estimated seconds of each option the model knows (others only win by measurement)."""
        ...

    def runner(self, spec: Any, option: str, grad: bool, plain: bool) -> Run:
        """``run(*inputs)`` of a problem in its computed dtype: the bound form, or the ``plain``
        form while tracing (shapes may be symbolic there)."""
        ...

    def random_inputs(self, spec: Any) -> tuple[torch.Tensor, ...]:
        """Inputs of ``spec``'s shapes to measure on."""
        ...

    def builtin_constants(self, device_type: str) -> tuple[Constants, str] | None:
        """The built-in constants for ``device_type`` and where they come from, or None."""
        ...

    def constant_names(self) -> list[str]:
        """The names of the constants of every registered backend."""
        ...


B = TypeVar("B")


class Registry(Generic[B]):
    """What a family whose options are backend records shares: the registry (name -> record,
    in order of preference among equals) and its changes, which the engine hears of.

    Args:
        engine: the engine that plans the family (it has ``register(family)``).
        backends: the registry.
    """

    def __init__(self, engine: Any, backends: dict[str, B]) -> None:
        self.engine, self.backends = engine, backends

    def register(self, backend: B) -> None:
        """Add (or replace) a method: it is validated, planned, measured and fitted from now on."""
        self.backends[backend.name] = backend  # type: ignore[attr-defined]
        self.engine.register(self)  # its decisions made again, its constants read again

    def unregister(self, name: str) -> None:
        """Remove a method added by :meth:`register`."""
        del self.backends[name]
        self.engine.register(self)

    def methods(self) -> tuple[str, ...]:
        return ("auto", *self.backends)

    def constant_names(self) -> list[str]:
        return constant_names(self.backends.values())

    def serves(self, backend: B, spec: Any) -> bool:
        """Whether the cost model estimates ``backend`` for ``spec`` (every record with terms)."""
        return True

    def method_estimates(self, spec: Any, grad: bool, constants: Constants) -> dict[str, float]:
        """Seconds per method whose record has terms and serves ``spec``."""
        wide = is_wide(spec.dtype)
        return {
            name: seconds(b.terms(spec), grad, wide, constants)  # type: ignore[attr-defined]
            for name, b in self.backends.items()
            if b.terms is not None and self.serves(b, spec)  # type: ignore[attr-defined]
        }
