"""Measured winners for repeated calls: the other options tried on real calls, within a budget.

A call signature that :func:`xcorr.xcorr` sees again and again (a training loop, a tracker's every
frame) is worth measuring, and a one-off call is not. So the cost model decides a signature's
first calls, and its bound call (kept per signature, see :mod:`xcorr.correlation.api`) then tries the other
options on the caller's own calls, one option at a time, and keeps the fastest: in the planner's
measured winners, which :func:`xcorr.save_tuning` saves. Every option computes the same
correlation exactly, so the results agree within float32 rounding whichever runs.

The policy:

1. The first :data:`SETTLE_CALLS` calls run the model's pick; the fastest of them after the
   first (which pays one-time costs: kernel selection, transform plans) is its time ``t``.
2. The budget is :data:`BUDGET_FRACTION` of :data:`BUDGET_CALLS` calls of the pick: ``5 t``.
   Only the options estimated within :data:`NEAR_ESTIMATE` times the pick's cost are tried.
   Each other option, cheapest estimate first, runs :data:`TRIAL_CALLS` real calls (the first
   pays its one-time costs, the fastest is kept), as long as the extra time it is expected to
   cost (from its estimate, then from its first call) fits what is left of the budget; the extra
   time actually spent is counted. So measuring costs at most the budget plus one call's
   overshoot, under 5% of the signature's first hundred calls' time when the estimates hold.
3. The fastest option is kept and runs from then on.

With a backward pass, a call's time is its forward's plus its backward's (from the gradient
reaching the output to the gradients of the inputs); when the backward of :data:`PENDING_CALLS`
calls has not run, the trials end with the pick. Only on devices with cost-model constants (the CPU), and
never once :func:`xcorr.set_autotune` was given ``True`` (then every new problem is measured on
its first call, as on CUDA, where timing a call needs a synchronisation) or ``False`` (the model
alone).
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import torch

Run = Callable[..., torch.Tensor]

#: Calls that run the model's pick before other options are tried.
SETTLE_CALLS = 3
#: The measuring budget, as a fraction of the time of :data:`BUDGET_CALLS` calls of the pick.
BUDGET_FRACTION = 0.05
BUDGET_CALLS = 100
#: Real calls per other option.
TRIAL_CALLS = 2
#: Only options estimated at most this many times the pick's cost are tried: the overshoot of a
#: trial is one call of the option, and where the model errs on a far option that call can cost
#: many budgets (FlowNetC B8 forward+backward: "shifted" estimated 5.3x "banded", measured 45x,
#: one call 30 s). The options worth trying are the near ties, where the model is least sure.
NEAR_ESTIMATE = 3.0
#: Calls whose backward has not run yet (two branches of a step may share a signature), beyond
#: which the calls are taken for calls without a backward pass and the trials end with the pick.
PENDING_CALLS = 8


class _Stopwatch(torch.autograd.Function):
    """The identity of its tensors, calling ``note`` when the backward pass goes through it: put
    on a call's output, when the call's backward starts; on its inputs, when it has ended."""

    @staticmethod
    def forward(ctx, note, *tensors):
        ctx.note = note
        return tuple(t.view_as(t) for t in tensors)

    @staticmethod
    def backward(ctx, *grads):
        ctx.note()
        return (None, *grads)


class Trials:
    """The bound call of one signature while its options are tried.

    Args:
        options: the allowed options, the model's pick first, then by estimated cost.
        estimates: estimated seconds per option.
        make_run: ``run(*inputs)`` of an option.
        grad: whether the calls are followed by a backward pass.
        record: keeps the winner (the planner's measured winners).
    """

    def __init__(
        self,
        options: list[str],
        estimates: dict[str, float],
        make_run: Callable[[str], Run],
        grad: bool,
        record: Callable[[str], None],
    ) -> None:
        pick = estimates.get(options[0], 0.0)
        near = [o for o in options[1:] if estimates.get(o, float("inf")) <= NEAR_ESTIMATE * pick]
        self.options, self.estimates, self.grad = [options[0], *near], estimates, grad
        self._make_run, self._record = make_run, record
        self._runs: dict[str, Run] = {}
        self.timings: dict[str, float] = {}
        #: Extra seconds the trials cost beyond the pick's time.
        self.spent = 0.0
        self.budget: float | None = None
        self._samples: dict[str, list[float]] = {option: [] for option in options}
        self._pending = 0
        self.winner: str | None = None
        self._lock = threading.Lock()

    def _run_of(self, option: str) -> Run:
        run = self._runs.get(option)
        if run is None:
            run = self._runs[option] = self._make_run(option)
        return run

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        winner = self.winner
        if winner is not None:  # the steady state: one lookup
            return self._runs[winner](*inputs)
        return self.call(None, *inputs)

    def call(self, ran: list[str] | None, *inputs: torch.Tensor) -> torch.Tensor:
        """The call on ``inputs``; the option that runs it is appended to ``ran`` (if given)."""
        option = self.winner
        if option is None:
            with self._lock:
                option = self._next()
            if option is not None:
                if ran is not None:
                    ran.append(option)
                return self._timed(option, *inputs)
            option = self.winner
            assert option is not None
        if ran is not None:
            ran.append(option)
        return self._run_of(option)(*inputs)

    def _next(self) -> str | None:
        """The option of the next call, or None once the winner is kept."""
        if self._pending > PENDING_CALLS:  # no backward follows these calls after all
            self._finish(self.options[0])
            return None
        pick = self.options[0]
        if len(self._samples[pick]) < SETTLE_CALLS:
            return pick
        if self.budget is None:
            self.timings[pick] = min(self._samples[pick][1:])
            self.budget = BUDGET_FRACTION * BUDGET_CALLS * self.timings[pick]
        base = self.timings[pick]
        for option in self.options[1:]:
            samples = self._samples[option]
            if len(samples) >= TRIAL_CALLS:
                continue
            expected = samples[-1] if samples else base * self.estimates[option] / max(self.estimates[pick], 1e-12)
            if self.spent + max(expected - base, 0.0) <= self.budget:
                return option
            if samples:  # stopped short: its one call says how slow it is
                self.timings[option] = samples[0]
        for option in self.options[1:]:
            if self._samples[option]:
                self.timings.setdefault(option, min(self._samples[option]))
        best = min(self.timings, key=self.timings.__getitem__)
        self._finish(best)
        return None

    def _finish(self, winner: str) -> None:
        self.winner = winner
        self._record(winner)
        self._runs = {winner: self._run_of(winner)}

    def _note(self, option: str, seconds: float) -> None:
        with self._lock:
            self._samples[option].append(seconds)
            if option != self.options[0] and self.budget is not None:
                self.spent += seconds - self.timings[self.options[0]]

    def _timed(self, option: str, *inputs: torch.Tensor) -> torch.Tensor:
        run = self._run_of(option)
        if not self.grad:
            start = time.perf_counter()
            out = run(*inputs)
            self._note(option, time.perf_counter() - start)
            return out
        began: list[float] = []

        def done() -> None:
            with self._lock:
                self._pending -= 1
            if began:
                self._note(option, forward + time.perf_counter() - began[0])

        with self._lock:
            self._pending += 1
        inputs = _Stopwatch.apply(done, *inputs)
        start = time.perf_counter()
        out = run(*inputs)
        forward = time.perf_counter() - start
        (out,) = _Stopwatch.apply(lambda: began.append(time.perf_counter()), out)
        return out
