"""Fitting the planner's cost-model constants (``python -m xcorr fit``); timings are never asserted."""

import json

import pytest

from xcorr import cli
from xcorr.benchmarks import costmodel
from xcorr.correlation.family import CORRELATION, PER_PASS
from xcorr.planning import Constants
from xcorr.planning.engine import ENGINE

BUILTIN = costmodel.builtin()

pytest.importorskip("scipy")


def synthetic_rows(constants, problems):
    """Rows whose times are exactly the model's estimates under ``constants``."""
    rows = []
    for mode, x, z in problems:
        row = {"mode": mode, "x": x, "z": z}
        spec = costmodel._spec(row)
        allowed = CORRELATION.candidates(spec)
        row["fwd"] = {m: ENGINE.estimate(spec, False, constants)[m] for m in allowed}
        row["both"] = {m: ENGINE.estimate(spec, True, constants)[m] for m in allowed}
        rows.append(row)
    return rows


def test_random_problems_respect_the_size_limit_and_repeat():
    problems = costmodel.random_problems(30, seed=3, max_macs=1e7)
    assert problems == costmodel.random_problems(30, seed=3, max_macs=1e7)
    assert {mode for mode, _, _ in problems} == {"naive", "depthwise", "upchannel"}
    for _mode, (B, C, H, _W), (Bz, Cz, h, w) in problems:
        assert B % Bz == 0 and Cz % C == 0 and h < H
        assert B * (H - h + 1) ** 2 * Cz * h * w <= 1e7


def test_fit_recovers_the_constants_that_made_the_times():
    truth = BUILTIN.replace(
        depthwise_mac=0.03,
        direct_call=90000.0,
        fft_point=0.2,
        gather_mac=0.01,
        dense_mac=0.02,
        direct_backward=2.5,
        fft_backward=1.5,
        gather_backward=3.0,
        dense_backward=4.0,
    )
    rows = synthetic_rows(truth, costmodel.random_problems(60, seed=1))
    fitted = costmodel.fit(rows, BUILTIN)
    # Every time the fitted model predicts is the true one (constants that no row can tell apart
    # may trade off, so predictions are compared, not the constants themselves).
    for row in rows:
        spec = costmodel._spec(row)
        for grad, key in ((False, "fwd"), (True, "both")):
            est = ENGINE.estimate(spec, grad, fitted)
            for method, seconds in row[key].items():
                assert est[method] == pytest.approx(seconds, rel=1e-6)
    assert fitted.depthwise_mac == pytest.approx(0.03, rel=1e-6)
    assert fitted.dense_backward == pytest.approx(4.0, rel=1e-6)


def test_evaluate_counts_picks_and_losses():
    rows = synthetic_rows(BUILTIN, costmodel.random_problems(20, seed=2))
    perfect = costmodel.evaluate(rows, BUILTIN)
    for key in ("fwd", "both"):
        assert perfect[key]["best"] == perfect[key]["problems"] == 20
        assert perfect[key]["worst_loss"] == perfect[key]["mean_loss"] == 1.0
    # A model that thinks FFT is free picks it everywhere, and pays where it is not the fastest.
    wrong = BUILTIN.replace(fft_call=0.0, fft_chunk=0.0, fft_point=0.0, fft_product=0.0)
    report = costmodel.evaluate(rows, wrong)["fwd"]
    slower = [r for r in rows if min(r["fwd"], key=r["fwd"].get) != "fft"]
    assert report["best"] == 20 - len(slower) < 20
    assert report["worst_loss"] > 1 and report["worst"]["picked"] == "fft"


def test_collect_times_every_allowed_method():
    rows = costmodel.collect([("naive", [2, 3, 9, 9], [1, 3, 4, 4]), ("depthwise", [1, 2, 8, 8], [1, 2, 3, 3])])
    assert set(rows[0]["fwd"]) == {"direct", "fft", "gather"}
    assert set(rows[0]["both"]) == {"direct", "fft", "gather", PER_PASS}  # each pass on its own too
    assert set(rows[1]["fwd"]) == {"direct", "fft"}
    assert all(t > 0 for r in rows for key in ("fwd", "both") for t in r[key].values())


def test_constants_source_is_the_backends_syntax():
    source = costmodel.constants_source(BUILTIN)
    assert eval(source) == {k: float(f"{v:.3g}") for k, v in BUILTIN.items()}
    assert "# direct" in source and "# fft" in source and "# gather" in source


def test_cli_fit_prints_constants_and_the_evaluation(tmp_path, capsys):
    path = tmp_path / "fit.json"
    assert cli.main(["fit", "--problems", "3", "--held-out", "2", "--max-macs", "1e6", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert '"depthwise_mac": ' in out and "# direct" in out
    assert "fastest method picked on" in out and "held-out problems" in out and "within 1.1x of it on" in out
    data = json.loads(path.read_text())
    assert len(data["train"]) == 3 and len(data["held_out"]) == 2
    assert set(data["fitted"]) == set(CORRELATION.constant_names())


def test_cli_fit_refuses_a_bad_device(capsys):
    assert cli.main(["fit", "--device", "nonsense"]) == 2
    assert "--device must be a torch device" in capsys.readouterr().err


def test_cli_fit_volumes_runs_the_cost_volume_fit(monkeypatch):
    from xcorr.benchmarks import volume_costmodel

    calls = []
    monkeypatch.setattr(volume_costmodel, "main", lambda *a: calls.append(a) or (Constants(), {}))
    assert cli.main(["fit", "--volumes", "--problems", "4", "--held-out", "2", "--seed", "3"]) == 0
    assert calls == [(4, 2, 3)]
