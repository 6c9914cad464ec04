"""Tilted ERM: the tilted loss and the statistics of its token weights."""

from __future__ import annotations

import math

import pytest
import torch

from ssae_steps.sae.objective import tilt_weight_stats, tilted_loss


@pytest.mark.parametrize("scale", ["batch_mean", "none"])
def test_tilted_loss(scale: str) -> None:
    losses = torch.tensor([0.1, 0.2, 0.3, 5.0])
    assert torch.equal(tilted_loss(losses, 0.0, scale), losses.mean())  # t = 0 is plain ERM, exactly
    assert tilted_loss(losses, 1e-4, scale) == pytest.approx(losses.mean().item(), rel=1e-3)
    values = [tilted_loss(losses, t, scale).item() for t in (0.0, 0.5, 2.0, 50.0, 5000.0)]
    assert values == sorted(values)  # increasing in t
    assert values[-1] == pytest.approx(5.0, rel=2e-3)  # -> max as t grows
    big = torch.tensor([1e4, 2e4, 3e4])
    assert math.isfinite(tilted_loss(big, 10.0, scale).item())  # log-sum-exp: no overflow


def _tilt_weights(losses: torch.Tensor, tilt: float, scale: str) -> torch.Tensor:
    leaf = losses.clone().requires_grad_(True)
    tilted_loss(leaf, tilt, scale).backward()
    return leaf.grad


def test_scale_free_tilt_reweights_the_same_at_any_loss_scale() -> None:
    """The gradient of the tilted loss is sum_i w_i grad l_i. With scale "batch_mean" the
    weights are softmax(t * l / mean(l)): the same for losses in any units; with "none"
    they are softmax(t * l) and a realistic loss scale (~0.1) leaves them near uniform."""
    losses = torch.tensor([0.05, 0.08, 0.1, 0.12, 0.3], dtype=torch.float64)
    t = 2.0
    weights = _tilt_weights(losses, t, "batch_mean")
    torch.testing.assert_close(weights, torch.softmax(t * losses / losses.mean(), 0))
    for factor in (1e-3, 10.0, 1e4):
        torch.testing.assert_close(_tilt_weights(factor * losses, t, "batch_mean"), weights)
    raw = _tilt_weights(losses, t, "none")
    torch.testing.assert_close(raw, torch.softmax(t * losses, 0))
    assert raw.max() / raw.min() < 2 < 40 < weights.max() / weights.min()  # e^(2*0.25) vs e^(2*0.25/0.13)


@pytest.mark.parametrize("scale", ["batch_mean", "none"])
def test_tilt_weight_stats_closed_form(scale: str) -> None:
    """Weights [1, 1, 1, 3] / 6 (one token at ln 3 above the rest, in tilted units): ESS =
    1 / (n sum w^2) = 1 / (4 * 12/36) = 0.75; the top 1% of 4 tokens is one, weight 0.5."""
    gap = math.log(3)
    losses = torch.tensor([1.0, 1.0, 1.0, 1.0 + gap])
    tilt = 1.0 if scale == "none" else float(losses.mean())  # t * l / mean(l) differs by ln 3 too
    stats = tilt_weight_stats(losses, tilt, scale)
    assert stats["tilt_ess"] == pytest.approx(0.75) and stats["tilt_top1_share"] == pytest.approx(0.5)
    assert math.isnan(stats["tilt_tail_share"])  # no tail mask, nothing to say
    tail = tilt_weight_stats(losses, tilt, scale, tail=torch.tensor([True, False, False, True]))
    assert tail["tail_fraction"] == pytest.approx(0.5) and tail["tilt_tail_share"] == pytest.approx(4 / 6)
    uniform = tilt_weight_stats(torch.rand(1000), 0.0, scale)
    assert uniform["tilt_ess"] == pytest.approx(1.0) and uniform["tilt_top1_share"] == pytest.approx(0.01)
