"""Tuning that persists: the cost-model profile and saved autotune winners."""

import dataclasses
import json
import warnings

import pytest
import torch

import xcorr
from xcorr import planner
from xcorr.planning import profile as _profile

PLANNER = planner.PLANNER
FIELDS = [f.name for f in dataclasses.fields(planner.Constants)]


@pytest.fixture(autouse=True)
def profile(tmp_path, monkeypatch):
    """A fresh planner reading its profile from a temporary path."""
    path = tmp_path / "profile.json"
    monkeypatch.setenv(_profile.PROFILE_ENV, str(path))
    PLANNER.reset_constants()
    xcorr.clear_cache()
    yield path
    monkeypatch.undo()
    PLANNER.reset_constants()
    xcorr.set_autotune(None)
    xcorr.clear_cache()


def fitted(**changes):
    return dataclasses.replace(planner.CONSTANTS["cpu"], **changes)


def test_default_path_is_in_the_user_cache_directory(monkeypatch, tmp_path):
    monkeypatch.delenv(_profile.PROFILE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert _profile.profile_path() == tmp_path / "xcorr" / "profile.json"


def test_no_profile_means_builtin_constants_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert PLANNER.constants("cpu") == planner.CONSTANTS["cpu"]
    assert PLANNER.constants_source("cpu") == planner.BUILTIN_SOURCE


def test_saved_constants_are_loaded_lazily_and_reported(profile):
    free_fft = fitted(fft_call=0.0, fft_chunk=0.0, fft_point=0.0, fft_product=0.0)
    path = _profile.save_constants("cpu", dataclasses.asdict(free_fft), {"problems": 3})
    assert path == profile
    entry = json.loads(profile.read_text())["entries"][0]
    assert entry["machine"] == _profile.machine("cpu") and entry["problems"] == 3
    PLANNER.reset_constants()  # as a new process: nothing read yet
    x, z = torch.rand(1, 4, 40, 40), torch.rand(1, 4, 9, 9)
    assert xcorr.choose_method(x, z, "depthwise") == "fft"
    assert PLANNER.constants("cpu") == free_fft
    source = xcorr.choose_method(x, z, "depthwise", measure=True).constants
    assert source.startswith(f"profile {profile}") and torch.backends.cpu.get_cpu_capability() in source


def test_saving_replaces_this_machines_entry_and_keeps_the_others(profile):
    other = {**_profile.machine("cpu"), "threads": 999}
    profile.write_text(
        json.dumps(
            {
                "format": _profile.PROFILE_FORMAT,
                "version": 1,
                "entries": [
                    {"machine": other, "constants": dataclasses.asdict(fitted())},
                ],
            }
        )
    )
    _profile.save_constants("cpu", dataclasses.asdict(fitted(fft_call=1.0)))
    _profile.save_constants("cpu", dataclasses.asdict(fitted(fft_call=2.0)))
    entries = json.loads(profile.read_text())["entries"]
    assert [e["machine"]["threads"] for e in entries] == [999, torch.get_num_threads()]
    assert entries[1]["constants"]["fft_call"] == 2.0


@pytest.mark.parametrize(
    "content, why",
    [
        ("{not json", "not valid JSON"),
        ('{"format": "something-else", "version": 1}', "not an xcorr-profile file"),
        ("[1, 2]", "not an xcorr-profile file"),
        ('{"format": "xcorr-profile", "version": 1, "entries": 3}', "no list of entries"),
        (
            '{"format": "xcorr-profile", "version": 1, "entries": [{"machine": {"device": "cpu", "kind": "X", '
            '"threads": 64, "torch": "0.1"}, "constants": {}}]}',
            "no entry for this machine",
        ),
    ],
)
def test_corrupt_or_foreign_profile_is_ignored_with_one_warning(profile, content, why):
    profile.write_text(content)
    with pytest.warns(RuntimeWarning, match=why) as record:
        assert PLANNER.constants("cpu") == planner.CONSTANTS["cpu"]
        PLANNER.constants("cpu")
        xcorr.xcorr(torch.rand(1, 2, 8, 8), torch.rand(1, 2, 3, 3))
    assert len(record) == 1
    assert PLANNER.constants_source("cpu") == planner.BUILTIN_SOURCE


def test_entry_with_other_constants_is_ignored(profile):
    values = dataclasses.asdict(fitted())
    del values["fft_call"]
    profile.write_text(
        json.dumps(
            {
                "format": _profile.PROFILE_FORMAT,
                "version": 1,
                "entries": [
                    {"machine": _profile.machine("cpu"), "constants": values},
                ],
            }
        )
    )
    with pytest.warns(RuntimeWarning, match="does not hold this version's constants"):
        assert PLANNER.constants("cpu") == planner.CONSTANTS["cpu"]


def test_tuning_round_trip(tmp_path, monkeypatch):
    x, z = torch.rand(2, 3, 20, 20), torch.rand(1, 3, 5, 5)
    method, timings = xcorr.choose_method(x, z, "depthwise", padding=1, measure=True)
    path = tmp_path / "tuning.json"
    xcorr.save_tuning(path)
    xcorr.clear_cache()
    assert xcorr.load_tuning(path) == 1
    # The loaded winner is used as measured: neither measured again nor modelled.
    monkeypatch.setattr(PLANNER, "estimate", lambda *a, **k: pytest.fail("modelled despite a loaded winner"))
    monkeypatch.setattr(PLANNER, "measure", lambda *a, **k: pytest.fail("measured despite a loaded winner"))
    xcorr.set_autotune(True)
    assert xcorr.choose_method(x, z, "depthwise", padding=1) == method


def test_tuning_from_another_machine_is_skipped_with_one_warning(tmp_path):
    xcorr.choose_method(torch.rand(2, 3, 20, 20), torch.rand(1, 3, 5, 5), measure=True)
    path = tmp_path / "tuning.json"
    xcorr.save_tuning(path)
    data = json.loads(path.read_text())
    data["machines"]["cpu"]["kind"] = "ANOTHER"
    path.write_text(json.dumps(data))
    xcorr.clear_cache()
    with pytest.warns(RuntimeWarning, match="measured on another machine"):
        assert xcorr.load_tuning(path) == 0
    assert PLANNER.measured_winners() == {}


@pytest.mark.parametrize(
    "content, why",
    [
        (None, "no such file"),
        ("{", "not valid JSON"),
        ('{"format": "xcorr-tuning", "version": 1}', "lacks its machines or winners"),
        (
            '{"format": "xcorr-tuning", "version": 1, "machines": {}, "winners": [{"key": {"mode": "naive"}}]}',
            "an entry is damaged",
        ),
    ],
)
def test_unusable_tuning_file_is_ignored_with_one_warning(tmp_path, content, why):
    path = tmp_path / "tuning.json"
    if content is not None:
        path.write_text(content)
    with pytest.warns(RuntimeWarning, match=why) as record:
        assert xcorr.load_tuning(path) == 0
    assert len(record) == 1


def test_fit_save_writes_the_profile(profile, capsys):
    pytest.importorskip("scipy")
    from xcorr.cli import main

    assert main(["fit", "--problems", "4", "--held-out", "2", "--max-macs", "2e6", "--save"]) == 0
    out = capsys.readouterr().out
    assert f"saved to {profile}" in out and f"current constants: {planner.BUILTIN_SOURCE}" in out
    entry = json.loads(profile.read_text())["entries"][0]
    assert sorted(entry["constants"]) == sorted(FIELDS) and entry["problems"] == 4
    PLANNER.reset_constants()
    assert PLANNER.constants("cpu") == planner.Constants(**entry["constants"])
