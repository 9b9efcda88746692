"""The planning engine's state, and its one invalidation (see :mod:`xcorr.planning.engine`)."""

from __future__ import annotations

import threading
from collections.abc import Hashable
from typing import Any, Callable

from .._tracing import compiling
from . import profile
from .cost import Constants
from .family import Family

#: Bound calls :attr:`State.derived` holds at most (then it starts again).
DERIVED_ENTRIES = 1024


class State:
    """The engine's state: its families, the constants in force, the measured winners, the
    decisions derived from them, and the one invalidation that drops those.

    Attributes:
        generation (int): changes whenever a decision may change; callers that remember answers
            keep them with the generation they were given in (:meth:`remember`).
        derived (dict): bound calls by call signature (:meth:`cached`), read directly on hot paths.
        tuning_source (str): where the measured winners came from, as the bench reports it.
    """

    def __init__(self) -> None:
        self.generation = 0
        self._autotune: bool | None = None
        self._families: dict[type, Family] = {}
        self._constants: dict[tuple[str, str], Constants] = {}
        self._sources: dict[tuple[str, str], str] = {}
        self._builtins: dict[tuple[str, str], tuple[Constants, str] | None] = {}
        self._profile_read = False
        self._measured: dict[tuple, str] = {}
        #: The winners taken from tuning files (also in ``_measured``): the only ones that
        #: deterministic mode uses.
        self._loaded: dict[tuple, str] = {}
        #: The model's answers by (key, deterministic mode): where a problem's estimate asks the
        #: decisions of others (a per-pass option), those differ between the modes.
        self._modelled: dict[tuple[tuple, bool], str] = {}
        self.derived: dict[Any, Any] = {}
        self.tuning_source = "measured in this process only"
        self._lock = threading.RLock()

    # Families.

    def register(self, family: Family) -> None:
        """Plan ``family``'s problems from now on."""
        self._families[family.spec_type] = family
        self._profile_read = False  # the profile may hold its constants
        self.invalidate()

    def family_of(self, spec: Any) -> Family:
        """The family of ``spec`` (by its class)."""
        return self._families[type(spec)]

    def families(self) -> list[Family]:
        """The registered families."""
        return list(self._families.values())

    # State and its one invalidation.

    def invalidate(self) -> None:
        """Drop every answer derived from the current state: the model's, and every bound call."""
        with self._lock:
            self.generation += 1
            self._modelled.clear()
            self._builtins.clear()  # a backend registered since may bring its own
            self.derived.clear()

    def remember(self, signature: Hashable, answer: Any, generation: int) -> None:
        """Keep ``answer`` in :attr:`derived` unless the state changed since ``generation``, when
        it was worked out (another thread's measurement, say); at most :data:`DERIVED_ENTRIES`."""
        if generation != self.generation:
            return
        if len(self.derived) >= DERIVED_ENTRIES:
            self.derived.clear()
        self.derived[signature] = answer

    def cached(self, signature: Hashable | None, build: Callable[[], Any]) -> Any:
        """The answer kept for ``signature``, or ``build()`` kept for it (None: not kept)."""
        if signature is None:
            return build()
        answer = self.derived.get(signature)
        if answer is None:
            generation = self.generation
            answer = build()
            self.remember(signature, answer, generation)
        return answer

    def clear(self) -> None:
        """Forget every measured winner, loaded ones too (and with :meth:`invalidate` whatever
        followed from them)."""
        with self._lock:
            self._measured.clear()
            self._loaded.clear()
            for family in self._families.values():
                # What a family saw of the calls, where it keeps any (the pyramids' lookups).
                forget = getattr(family, "forget_seen", None)
                if forget is not None:
                    forget()
            self.invalidate()

    @property
    def autotune(self) -> bool | None:
        """The autotune setting (see :func:`xcorr.set_autotune`)."""
        return self._autotune

    def set_autotune(self, enabled: bool | None) -> None:
        if enabled is not None and not isinstance(enabled, bool):
            raise TypeError(f"enabled must be True, False or None, got {enabled!r}")
        self._autotune = enabled
        self.invalidate()

    # Constants.

    def set_constants(
        self, family: str, device_type: str, constants: Constants, source: str = "set at run time"
    ) -> None:
        """Use ``constants`` for ``family``'s problems on ``device_type`` from now on."""
        if not isinstance(constants, Constants):
            raise TypeError(f"constants must be a planning.Constants, got {type(constants).__name__}")
        self._read_profile()
        self._constants[family, device_type] = constants
        self._sources[family, device_type] = source
        self.invalidate()

    def reset_constants(self) -> None:
        """Back to the built-in constants; the profile is read again on next use."""
        self._constants.clear()
        self._sources.clear()
        self._profile_read = False
        self.invalidate()

    def _read_profile(self) -> None:
        """Take the saved profile's constants for this machine, once (lazily: on first use)."""
        if self._profile_read or compiling():
            return
        self._profile_read = True
        names = {f.name: f.constant_names() for f in self._families.values()}
        for where, (values, source) in profile.load_constants(names).items():
            if where not in self._constants:  # set_constants wins over the profile
                self._constants[where] = Constants(values)
                self._sources[where] = source

    def _builtin(self, family: Family, device_type: str) -> tuple[Constants, str] | None:
        where = (family.name, device_type)
        if where not in self._builtins:
            self._builtins[where] = family.builtin_constants(device_type)
        return self._builtins[where]

    def constants(self, family: Family, device_type: str) -> Constants | None:
        """The constants in force for ``family`` on ``device_type``, or None where it has none
        (its problems are measured there)."""
        self._read_profile()
        c = self._constants.get((family.name, device_type))
        if c is not None:
            return c
        builtin = self._builtin(family, device_type)
        return builtin[0] if builtin else None

    def model_constants(self, family: Family, device_type: str) -> Constants:
        """The constants the cost model uses for ``device_type``: its own, or else the CPU's."""
        c = self.constants(family, device_type) or self.constants(family, "cpu")
        assert c is not None  # every family has built-in CPU constants
        return c

    def constants_source(self, family: Family, device_type: str) -> str:
        """Where the constants in force for ``family`` on ``device_type`` come from."""
        self._read_profile()
        source = self._sources.get((family.name, device_type))
        if source is not None:
            return source
        builtin = self._builtin(family, device_type)
        return builtin[1] if builtin else "none: every new problem is measured"

    # Measured winners.

    def measured_winners(self) -> dict[tuple, str]:
        """A copy of the measured winners (for :func:`xcorr.save_tuning`)."""
        with self._lock:
            return dict(self._measured)

    def add_winners(self, winners: dict[tuple, str]) -> None:
        """Take measured winners (from :func:`xcorr.load_tuning`); unknown options are skipped.
        They serve deterministic mode too, as measured winners of this process do not."""
        with self._lock:
            for key, option in winners.items():
                family = next((f for f in self._families.values() if isinstance(key, f.key_type)), None)
                if family is not None and option in family.option_names():
                    self._measured[key] = self._loaded[key] = option
            self.invalidate()

    def record(self, key: tuple, winner: str) -> None:
        """Keep a winner measured elsewhere (on real calls: :mod:`xcorr.planning.trials`); later
        decisions take it, the calls bound before keep theirs."""
        with self._lock:
            self._measured[key] = winner
            self._modelled.pop((key, False), None)

    def is_measured(self, key: tuple) -> bool:
        """Whether the problem of ``key`` has a measured winner."""
        return key in self._measured

    def winner(self, key: tuple, fixed: bool) -> str | None:
        """The measured winner of ``key``'s problem, or None; in deterministic mode (``fixed``)
        only a loaded one: a winner measured in this process depends on its timings."""
        return (self._loaded if fixed else self._measured).get(key)
