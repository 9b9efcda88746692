"""Tuning that persists: the cost-model profile and saved autotune winners."""

import json
import warnings

import pytest
import torch

import xcorr
from xcorr.correlation.family import CORRELATION
from xcorr.planning import Constants
from xcorr.planning import profile as _profile
from xcorr.planning.engine import ENGINE
from xcorr.volumes.family import PYRAMIDS, VOLUMES, PyramidKey, VolumeKey
from xcorr.volumes.spec import PyramidSpec, check_local_correlation, check_stereo_correlation

FIELDS = CORRELATION.constant_names()
BUILTIN, BUILTIN_SOURCE = CORRELATION.builtin_constants("cpu")


@pytest.fixture(autouse=True)
def profile(tmp_path, monkeypatch):
    """A fresh planning engine reading its profile from a temporary path."""
    path = tmp_path / "profile.json"
    monkeypatch.setenv(_profile.PROFILE_ENV, str(path))
    ENGINE.reset_constants()
    xcorr.clear_cache()
    yield path
    monkeypatch.undo()
    ENGINE.reset_constants()
    xcorr.set_autotune(None)
    xcorr.clear_cache()


def fitted(**changes):
    return BUILTIN.replace(**changes)


def saved(constants):
    """``constants`` as a profile entry holds them."""
    return {CORRELATION.name: dict(constants)}


def test_default_path_is_in_the_user_cache_directory(monkeypatch, tmp_path):
    monkeypatch.delenv(_profile.PROFILE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert _profile.profile_path() == tmp_path / "xcorr" / "profile.json"


def test_no_profile_means_builtin_constants_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ENGINE.constants(CORRELATION, "cpu") == BUILTIN
    assert ENGINE.constants_source(CORRELATION, "cpu") == BUILTIN_SOURCE


def test_saved_constants_are_loaded_lazily_and_reported(profile):
    free_fft = fitted(fft_call=0.0, fft_chunk=0.0, fft_point=0.0, fft_product=0.0)
    path = _profile.save_constants("cpu", saved(free_fft), {CORRELATION.name: {"problems": 3}})
    assert path == profile
    entry = json.loads(profile.read_text())["entries"][0]
    assert entry["machine"] == _profile.machine("cpu") and entry["fits"][CORRELATION.name]["problems"] == 3
    ENGINE.reset_constants()  # as a new process: nothing read yet
    x, z = torch.rand(1, 4, 40, 40), torch.rand(1, 4, 9, 9)
    assert xcorr.choose_method(x, z, "depthwise") == "fft"
    assert ENGINE.constants(CORRELATION, "cpu") == free_fft
    source = xcorr.choose_method(x, z, "depthwise", measure=True).constants
    assert source.startswith(f"profile {profile}") and torch.backends.cpu.get_cpu_capability() in source


def test_saving_replaces_this_machines_entry_and_keeps_the_others(profile):
    other = {**_profile.machine("cpu"), "threads": 999}
    profile.write_text(
        json.dumps(
            {
                "format": _profile.PROFILE_FORMAT,
                "version": _profile.VERSION,
                "entries": [
                    {"machine": other, "constants": saved(fitted())},
                ],
            }
        )
    )
    _profile.save_constants("cpu", saved(fitted(fft_call=1.0)))
    _profile.save_constants("cpu", saved(fitted(fft_call=2.0)))
    entries = json.loads(profile.read_text())["entries"]
    assert [e["machine"]["threads"] for e in entries] == [999, torch.get_num_threads()]
    assert entries[1]["constants"][CORRELATION.name]["fft_call"] == 2.0


@pytest.mark.parametrize(
    "content, why",
    [
        ("{not json", "not valid JSON"),
        ('{"format": "something-else", "version": 1}', "not an xcorr-profile file"),
        ("[1, 2]", "not an xcorr-profile file"),
        ('{"format": "xcorr-profile", "version": 1, "entries": []}', "not an xcorr-profile file of version 2"),
        ('{"format": "xcorr-profile", "version": 2, "entries": 3}', "no list of entries"),
        (
            '{"format": "xcorr-profile", "version": 2, "entries": [{"machine": {"device": "cpu", "kind": "X", '
            '"threads": 64, "torch": "0.1"}, "constants": {}}]}',
            "no entry for this machine",
        ),
    ],
)
def test_corrupt_or_foreign_profile_is_ignored_with_one_warning(profile, content, why):
    profile.write_text(content)
    with pytest.warns(RuntimeWarning, match=why) as record:
        assert ENGINE.constants(CORRELATION, "cpu") == BUILTIN
        ENGINE.constants(CORRELATION, "cpu")
        xcorr.xcorr(torch.rand(1, 2, 8, 8), torch.rand(1, 2, 3, 3))
    assert len(record) == 1
    assert ENGINE.constants_source(CORRELATION, "cpu") == BUILTIN_SOURCE


def test_entry_with_other_constants_is_ignored(profile):
    values = dict(fitted())
    del values["fft_call"]
    profile.write_text(
        json.dumps(
            {
                "format": _profile.PROFILE_FORMAT,
                "version": _profile.VERSION,
                "entries": [
                    {"machine": _profile.machine("cpu"), "constants": {CORRELATION.name: values}},
                ],
            }
        )
    )
    with pytest.warns(RuntimeWarning, match="does not hold this version's correlation constants"):
        assert ENGINE.constants(CORRELATION, "cpu") == BUILTIN


def test_tuning_round_trip(tmp_path, monkeypatch):
    x, z = torch.rand(2, 3, 20, 20), torch.rand(1, 3, 5, 5)
    method, timings = xcorr.choose_method(x, z, "depthwise", padding=1, measure=True)
    path = tmp_path / "tuning.json"
    xcorr.save_tuning(path)
    xcorr.clear_cache()
    assert xcorr.load_tuning(path) == 1
    # The loaded winner is used as measured: neither measured again nor modelled.
    monkeypatch.setattr(ENGINE, "estimate", lambda *a, **k: pytest.fail("modelled despite a loaded winner"))
    monkeypatch.setattr(ENGINE, "measure", lambda *a, **k: pytest.fail("measured despite a loaded winner"))
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
    assert ENGINE.measured_winners() == {}


@pytest.mark.parametrize(
    "content, why",
    [
        (None, "no such file"),
        ("{", "not valid JSON"),
        ('{"format": "xcorr-tuning", "version": 2}', "lacks its machines or winners"),
        (
            '{"format": "xcorr-tuning", "version": 2, "machines": {}, "winners": [{"key": {"mode": "naive"}}]}',
            "an entry is damaged",
        ),
        (
            '{"format": "xcorr-tuning", "version": 2, "machines": {}, "winners": [{"key": {"family": "correlation", '
            '"mode": "naive"}}]}',
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
    assert f"saved to {profile}" in out and f"current constants: {BUILTIN_SOURCE}" in out
    entry = json.loads(profile.read_text())["entries"][0]
    assert (
        sorted(entry["constants"][CORRELATION.name]) == sorted(FIELDS)
        and entry["fits"][CORRELATION.name]["problems"] == 4
    )
    ENGINE.reset_constants()
    assert ENGINE.constants(CORRELATION, "cpu") == Constants(entry["constants"][CORRELATION.name])


def test_volume_and_pyramid_winners_round_trip(tmp_path, monkeypatch):
    f1, f2 = torch.rand(1, 4, 12, 16), torch.rand(1, 4, 12, 16)
    xcorr.set_autotune(True)
    xcorr.local_correlation(f1, f2, 2)
    pyramid = xcorr.CorrPyramid(f1, f2, 2, 1)
    winners = ENGINE.measured_winners()
    assert {type(k) for k in winners} == {VolumeKey, PyramidKey}
    volume = winners[VOLUMES.key(local_spec(f1), False)]
    path = tmp_path / "tuning.json"
    xcorr.save_tuning(path)
    assert {w["key"]["family"] for w in json.loads(path.read_text())["winners"]} == {VOLUMES.name, PYRAMIDS.name}
    xcorr.clear_cache()
    assert xcorr.load_tuning(path) == 2 and ENGINE.measured_winners() == winners
    # The loaded winners are used as measured: neither measured again nor modelled.
    monkeypatch.setattr(ENGINE, "estimate", lambda *a, **k: pytest.fail("modelled despite a loaded winner"))
    monkeypatch.setattr(ENGINE, "measure", lambda *a, **k: pytest.fail("measured despite a loaded winner"))
    assert ENGINE.decide(local_spec(f1)) == volume
    assert xcorr.CorrPyramid(f1, f2, 2, 1).method == pyramid.method


def test_a_pyramid_key_without_a_field_added_since_reads_with_its_default():
    key = PyramidKey((1, 4, 12, 16), 2, 1, torch.float32, "cpu", None, False)
    written = _profile.key_to_json(PYRAMIDS.name, key)
    assert written.pop("once") is False
    assert _profile.key_from_json(written, {PYRAMIDS.name: PyramidKey}) == key
    with pytest.raises(TypeError, match="fields"):
        _profile.key_from_json({**written, "other": 1}, {PYRAMIDS.name: PyramidKey})
    with pytest.raises(TypeError, match="fields"):
        _profile.key_from_json({k: v for k, v in written.items() if k != "radius"}, {PYRAMIDS.name: PyramidKey})


def local_spec(f):
    return check_local_correlation(f, f, 2, 1, 1, 1, "none", "flat")


def test_a_loaded_pyramid_winner_overrides_the_memory_rules_choice(tmp_path):
    f1, f2 = torch.rand(1, 4, 12, 16), torch.rand(1, 4, 12, 16)
    spec = PyramidSpec(tuple(f1.shape), 2, 1, torch.float32, f1.device)
    assert PYRAMIDS.options(spec) == ["all_pairs", "on_demand"]
    assert xcorr.CorrPyramid(f1, f2, 2, 1).method == "all_pairs"  # the model's: the volumes fit
    ENGINE.record(PYRAMIDS.key(spec, False), "on_demand")
    path = tmp_path / "tuning.json"
    xcorr.save_tuning(path)
    xcorr.clear_cache()
    assert xcorr.CorrPyramid(f1, f2, 2, 1).method == "all_pairs"
    assert xcorr.load_tuning(path) == 1
    assert xcorr.CorrPyramid(f1, f2, 2, 1).method == "on_demand"


def tiny_volumes(count, seed=0):
    """Cost volumes small enough to time in milliseconds, local and stereo."""
    f = torch.empty(1, 4, 6, 9)
    return [
        check_local_correlation(f, f, 1 + i % 2, 1, 1, 1, "mean", "flat")
        if i % 3
        else check_stereo_correlation(f, f, 3 + i, None, "mean")
        for i in range(count)
    ]


def test_fit_volumes_save_writes_the_profile_beside_the_correlations(profile, capsys, monkeypatch, tmp_path):
    pytest.importorskip("scipy")
    from xcorr.benchmarks import volume_costmodel
    from xcorr.cli import main

    monkeypatch.setattr(volume_costmodel, "problems", tiny_volumes)
    _profile.save_constants("cpu", saved(fitted(fft_call=1.0)))
    report = tmp_path / "fit.json"
    assert main(["fit", "--volumes", "--problems", "4", "--held-out", "2", "--save", "--json", str(report)]) == 0
    assert f"saved to {profile}" in capsys.readouterr().out
    entry = json.loads(profile.read_text())["entries"][0]
    values = entry["constants"][VOLUMES.name]
    assert sorted(values) == sorted(VOLUMES.constant_names()) and entry["fits"][VOLUMES.name]["problems"] == 4
    assert entry["constants"][CORRELATION.name]["fft_call"] == 1.0  # kept
    assert json.loads(report.read_text())["fitted"] == values
    ENGINE.reset_constants()  # as a new process: the profile is read on first use
    assert ENGINE.constants(VOLUMES, "cpu") == Constants(values)
    assert ENGINE.constants_source(VOLUMES, "cpu").startswith(f"profile {profile}")
    spec = tiny_volumes(2)[1]
    assert ENGINE.estimate(spec) == VOLUMES.estimate(spec, False, Constants(values))
    assert ENGINE.constants(CORRELATION, "cpu") == fitted(fft_call=1.0)


def test_fit_volumes_refuses_another_device(capsys):
    from xcorr.cli import main

    assert main(["fit", "--volumes", "--device", "meta"]) == 2
    assert "--volumes times on the CPU only" in capsys.readouterr().err
