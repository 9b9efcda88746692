"""Tuning that persists, like FFTW's wisdom or cuDNN's benchmark cache: files in, files out.

Two kinds of file, both JSON:

* **The profile**: cost-model constants that ``python -m xcorr fit --save`` fitted, one entry
  per machine (device kind, thread count, torch version). The planner reads it lazily, on its
  first decision, from ``$XCORR_PROFILE`` or else ``xcorr/profile.json`` in the user's cache
  directory (``$XDG_CACHE_HOME``, by default ``~/.cache``; ``%LOCALAPPDATA%`` on Windows).
* **Tuning files**: measured winners of autotune, written by :func:`xcorr.save_tuning` and read
  by :func:`xcorr.load_tuning`, each winner with the machine it was measured on.

A file that cannot be read, is not one of these, or was made on another machine is ignored with
one warning: the planner then keeps what it had. This module only reads and writes; the planner
decides what to do with what it reads.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

PROFILE_ENV = "XCORR_PROFILE"
PROFILE_FORMAT = "xcorr-profile"
TUNING_FORMAT = "xcorr-tuning"
VERSION = 2

Key = tuple
Machine = dict[str, Any]


def profile_path() -> Path:
    """Where the profile is read from and saved to."""
    override = os.environ.get(PROFILE_ENV)
    if override:
        return Path(override).expanduser()
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        base = Path(os.environ["LOCALAPPDATA"])
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "xcorr" / "profile.json"


def device_kind(device_type: str) -> str:
    """What kind of ``device_type`` this process runs on: the CPU capability torch dispatches to
    (``DEFAULT``, ``AVX2``, ``AVX512``, ...) or the GPU's name."""
    if device_type == "cpu":
        return str(torch.backends.cpu.get_cpu_capability())
    if device_type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return device_type


def machine(device_type: str) -> Machine:
    """The key of this machine's entries: device type and kind, thread count, torch version."""
    return {
        "device": device_type,
        "kind": device_kind(device_type),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def describe(m: Machine) -> str:
    return f"{m['device']} {m['kind']}, {m['threads']} threads, torch {m['torch']}"


class _Unusable(Exception):
    """A file that is not one of ours, or is damaged: the message says which."""


def _read(path: Path, fmt: str) -> dict[str, Any] | None:
    """The file's content, None if there is no file; :class:`_Unusable` if it is not a ``fmt`` file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise _Unusable(f"cannot read it ({error})") from None
    try:
        data = json.loads(text)
    except ValueError as error:
        raise _Unusable(f"it is not valid JSON ({error})") from None
    if not isinstance(data, dict) or data.get("format") != fmt or data.get("version") != VERSION:
        raise _Unusable(f"it is not an {fmt} file of version {VERSION}")
    return data


def _write(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` atomically (a half-written file would be ignored, not trusted)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _warn(path: Path, why: str, what: str) -> None:
    warnings.warn(f"xcorr: ignoring {what} {path}: {why}", RuntimeWarning, stacklevel=4)


def load_constants(
    families: dict[str, list[str]], device_types: Iterable[str] = ("cpu", "cuda")
) -> dict[tuple[str, str], tuple[dict[str, float], str]]:
    """The profile's constants for this machine, by (family, device type), each with its source's
    description.

    ``families`` maps each family's name to its constants' names; a family whose saved names are
    not exactly these is ignored (a profile of another version, or of other backends).
    """
    path = profile_path()
    try:
        data = _read(path, PROFILE_FORMAT)
    except _Unusable as error:
        _warn(path, str(error), "profile")
        return {}
    if data is None:
        return {}
    found: dict[tuple[str, str], tuple[dict[str, float], str]] = {}
    matched = False
    entries = data.get("entries")
    if not isinstance(entries, list):
        _warn(path, "it has no list of entries", "profile")
        return {}
    for device_type in device_types:
        if device_type == "cuda" and not torch.cuda.is_available():
            continue
        here = machine(device_type)
        for entry in entries:
            if not isinstance(entry, dict) or entry.get("machine") != here:
                continue
            matched = True
            saved = entry.get("constants")
            for family, names in families.items():
                values = saved.get(family) if isinstance(saved, dict) else None
                if values is None and isinstance(saved, dict):
                    continue  # this family was not fitted here
                if (
                    not isinstance(values, dict)
                    or set(values) != set(names)
                    or not all(isinstance(v, (int, float)) for v in values.values())
                ):
                    _warn(
                        path,
                        f"its entry for {describe(here)} does not hold this version's {family} constants",
                        "profile",
                    )
                    continue
                found[family, device_type] = (
                    {k: float(v) for k, v in values.items()},
                    f"profile {path} ({describe(here)})",
                )
    if not matched and entries:
        machines = "; ".join(
            describe(e["machine"])
            for e in entries
            if isinstance(e, dict) and isinstance(e.get("machine"), dict) and set(e["machine"]) == set(machine("cpu"))
        )
        _warn(
            path,
            f"it has no entry for this machine ({describe(machine('cpu'))}), only for: {machines or 'none'}; "
            "run python -m xcorr fit --save here",
            "profile",
        )
    return found


def save_constants(
    device_type: str, constants: dict[str, dict[str, float]], fits: dict[str, dict[str, Any]] | None = None
) -> Path:
    """Add (or update) this machine's entry of the profile; returns the profile's path.

    ``constants``: family -> name -> value; ``fits``: family -> what its fit was (problems, seed,
    evaluation), kept beside. Families not given keep what the entry had (the correlations'
    constants survive a fit of the volumes', and the other way round)."""
    path = profile_path()
    try:
        data = _read(path, PROFILE_FORMAT)
    except _Unusable as error:
        _warn(path, f"{error}; it is replaced", "profile")
        data = None
    here = machine(device_type)
    old = [e for e in (data or {}).get("entries", []) if isinstance(e, dict)]
    entry = next((e for e in old if e.get("machine") == here), {})
    kept, kept_fits = entry.get("constants"), entry.get("fits")
    merged = {**(kept if isinstance(kept, dict) else {}), **constants}
    merged_fits = {**(kept_fits if isinstance(kept_fits, dict) else {}), **(fits or {})}
    entries = [e for e in old if e.get("machine") != here]
    entries.append({"machine": here, "constants": merged, "fits": merged_fits})
    _write(path, {"format": PROFILE_FORMAT, "version": VERSION, "entries": entries})
    return path


def _to_json(value: Any) -> Any:
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if isinstance(value, tuple):
        return [_to_json(v) for v in value]
    return value


def _from_json(value: Any, field: str) -> Any:
    if field == "dtype":
        dtype = getattr(torch, str(value))
        if not isinstance(dtype, torch.dtype):
            raise TypeError(value)
        return dtype
    if isinstance(value, list):
        return tuple(_from_json(v, "") for v in value)
    if not (value is None or type(value) in (int, str, bool)):
        raise TypeError(value)
    return value


def key_to_json(family: str, key: Key) -> dict[str, Any]:
    """A family's key (a named tuple) as JSON: its fields, and the family's name."""
    return {"family": family, **{name: _to_json(v) for name, v in key._asdict().items()}}  # type: ignore[attr-defined]


def key_from_json(k: dict[str, Any], key_types: dict[str, type]) -> Key:
    """The key that :func:`key_to_json` wrote, of the family it names (``key_types``: family
    name -> its key's named-tuple type); raises KeyError or TypeError if it is not one."""
    key_type = key_types[k["family"]]
    fields = key_type._fields  # type: ignore[attr-defined]
    # A field with a default may be absent (a file written before the field was added).
    defaults = key_type._field_defaults  # type: ignore[attr-defined]
    if not {"family", *fields} - set(defaults) <= set(k) <= {"family", *fields}:
        raise TypeError(f"fields {sorted(k)}")
    key = key_type(**{name: _from_json(k[name], name) for name in fields if name in k})
    if type(key.grad) is not bool or type(key.device_type) is not str:
        raise TypeError(k)
    return key


def save_tuning(path: str | os.PathLike, winners: dict[Key, str], families: dict[type, str]) -> None:
    """Write ``winners`` (a family's key -> option) with the machine each was measured on
    (``families``: key type -> family name)."""
    devices = sorted({key.device_type for key in winners})  # type: ignore[attr-defined]
    _write(
        Path(path),
        {
            "format": TUNING_FORMAT,
            "version": VERSION,
            "machines": {d: machine(d) for d in devices},
            "winners": [{"key": key_to_json(families[type(k)], k), "method": m} for k, m in winners.items()],
        },
    )


def load_tuning(path: str | os.PathLike, key_types: dict[str, type]) -> dict[Key, str]:
    """The winners of a tuning file measured on this machine (``key_types``: family name -> its
    key type); the rest is ignored with one warning."""
    path = Path(path)
    try:
        data = _read(path, TUNING_FORMAT)
        if data is None:
            raise _Unusable("there is no such file")
        machines, rows = data.get("machines"), data.get("winners")
        if not isinstance(machines, dict) or not isinstance(rows, list):
            raise _Unusable("it lacks its machines or winners")
        winners: dict[Key, str] = {}
        foreign = set()
        for row in rows:
            key = key_from_json(row["key"], key_types)
            device_type = key.device_type  # type: ignore[attr-defined]
            if machines.get(device_type) != machine(device_type):
                foreign.add(device_type)
                continue
            winners[key] = str(row["method"])
    except _Unusable as error:
        _warn(path, str(error), "tuning file")
        return {}
    except (KeyError, TypeError, AttributeError, ValueError) as error:
        _warn(path, f"an entry is damaged ({type(error).__name__}: {error})", "tuning file")
        return {}
    if foreign:
        _warn(path, f"its winners for {', '.join(sorted(foreign))} were measured on another machine", "tuning file")
    return winners
