"""xcorr._spares.OUTPUTS: large results made again in the memory of dropped ones, never in memory
that a tensor still holds."""

import gc

import pytest
import torch
from reference import stereo_reference

import xcorr
import xcorr._spares as spares
from xcorr._spares import OUTPUTS
from xcorr.volumes.spec import check_stereo_correlation


@pytest.fixture(autouse=True)
def small_outputs(monkeypatch):
    """Results of a few kilobytes already count as large; an empty pool before and after."""
    monkeypatch.setattr(spares, "OUTPUT_MIN_BYTES", 4096)
    OUTPUTS.clear()
    yield
    OUTPUTS.clear()


def test_a_dropped_result_is_made_again_in_its_memory():
    first = OUTPUTS.empty((32, 64), torch.float32, torch.device("cpu"))
    address = first.data_ptr()
    assert address % 64 == 0 and first.shape == (32, 64) and first.dtype == torch.float32
    del first
    gc.collect()
    again = OUTPUTS.empty((64, 32), torch.float32, torch.device("cpu"))  # the same bytes, another shape
    assert again.data_ptr() == address and len(OUTPUTS) == 1


@pytest.mark.parametrize("keep", ["the result", "a view of it", "a reshaped view", "a numpy view"])
def test_memory_that_a_tensor_still_holds_is_not_reused(keep):
    first = OUTPUTS.empty((32, 64), torch.float32, torch.device("cpu"))
    first.fill_(7.0)
    held = {
        "the result": lambda t: t,
        "a view of it": lambda t: t[3:5],
        "a reshaped view": lambda t: t.view(-1, 16).t(),
        "a numpy view": lambda t: t.numpy(),
    }[keep](first)
    del first
    gc.collect()
    second = OUTPUTS.empty((32, 64), torch.float32, torch.device("cpu"))
    second.fill_(-1.0)
    assert (torch.as_tensor(held) == 7.0).all() and len(OUTPUTS) == 2


@pytest.mark.parametrize(
    "shape, dtype, why",
    [
        ((8, 8), torch.float32, "under OUTPUT_MIN_BYTES"),
        ((32, 64), torch.bfloat16, "a dtype numpy does not hold"),
        ((32, 64), torch.complex64, "a dtype numpy does not hold"),
    ],
)
def test_small_or_other_results_are_plain_tensors(shape, dtype, why):
    out = OUTPUTS.empty(shape, dtype, torch.device("cpu"))
    assert out.shape == shape and out.dtype == dtype and len(OUTPUTS) == 0, why


def test_past_the_budget_results_are_plain_tensors_and_free_buffers_make_room(monkeypatch):
    monkeypatch.setattr(spares, "OUTPUT_BYTES", 3 * (8192 + 64))
    held = [OUTPUTS.empty((2048,), torch.float32, torch.device("cpu")) for _ in range(4)]
    assert len(OUTPUTS) == 3  # the fourth is a plain tensor
    del held
    gc.collect()
    # A result of another size evicts free buffers (two of the three) rather than pass the budget.
    OUTPUTS.empty((1024, 3), torch.float32, torch.device("cpu"))
    assert len(OUTPUTS) == 2


def test_clear_cache_forgets_the_buffers():
    kept = OUTPUTS.empty((32, 64), torch.float32, torch.device("cpu"))
    kept.fill_(1.0)
    xcorr.clear_cache()
    assert len(OUTPUTS) == 0 and bool((kept == 1.0).all())


@pytest.mark.parametrize("grad", [False, True])
def test_cost_volumes_in_reused_memory_stay_exact(grad):
    # GwcNet's group-wise volume twice: the second result is made while the first is held (new
    # memory), the third after both are dropped (their memory): every one exact.
    g = torch.Generator().manual_seed(0)
    pairs = [tuple(torch.randn(2, 8, 5, 13, generator=g, dtype=torch.float64) for _ in range(2)) for _ in range(3)]
    spec = check_stereo_correlation(*pairs[0], 6, 4, "mean")

    def volume(left, right):
        return xcorr.volumes.correlate(left, right, spec, method="banded")

    first, second = volume(*pairs[0]), volume(*pairs[1])
    assert first.data_ptr() != second.data_ptr()
    used = {first.data_ptr(), second.data_ptr()}
    del first, second
    gc.collect()
    left, right = (t.requires_grad_(grad) for t in pairs[2])
    third = volume(left, right)
    assert third.data_ptr() in used
    torch.testing.assert_close(third, stereo_reference(left.detach(), right.detach(), 6, 4), rtol=1e-12, atol=1e-12)
    if grad:
        third.sum().backward()
        assert left.grad is not None and right.grad is not None
