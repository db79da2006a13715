"""PPO arithmetic against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.methods.ppo import core


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_whiten_gives_zero_mean_unit_variance_over_the_mask():
    x, mask = t([1.0, 2.0, 3.0, 99.0]), t([1.0, 1.0, 1.0, 0.0])
    out = core.whiten(x, mask)
    # mean 2, unbiased variance ((1)^2 + 0 + 1^2) / 2 = 1 -> (x - 2) / 1; the padded entry is zeroed
    torch.testing.assert_close(out, t([-1.0, 0.0, 1.0, 0.0]), atol=1e-6, rtol=0)


def test_token_rewards_put_the_score_on_the_last_real_token_and_the_kl_everywhere():
    logprobs, ref = t([-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]), t([-1.5, -2.0, -2.0], [-1.0, -1.0, -1.0])
    mask = t([1.0, 1.0, 0.0], [1.0, 1.0, 1.0])
    rewards, kl = core.token_rewards(t(1.0, -1.0), logprobs, ref, mask, kl_coef=0.2)
    torch.testing.assert_close(kl, t([0.5, 0.0, 0.0], [0.0, 0.0, 0.0]))
    # row 0: -0.2 * 0.5 = -0.1 at t0; score 1.0 at t1 (its last real token); padding stays 0
    torch.testing.assert_close(rewards, t([-0.1, 1.0, 0.0], [0.0, 0.0, -1.0]))


def test_gae_matches_hand_computation():
    gamma, lam = 0.9, 0.8
    rewards, values, mask = t([0.0, 0.0, 1.0]), t([0.5, 0.6, 0.7]), t([1.0, 1.0, 1.0])
    adv, ret = core.gae(rewards, values, mask, gamma, lam)
    d2 = 1.0 - 0.7  # r2 + gamma * 0 - V2
    d1 = 0.0 + gamma * 0.7 - 0.6
    d0 = 0.0 + gamma * 0.6 - 0.5
    a2 = d2
    a1 = d1 + gamma * lam * a2
    a0 = d0 + gamma * lam * a1
    torch.testing.assert_close(adv, t([a0, a1, a2]))
    torch.testing.assert_close(ret, t([a0 + 0.5, a1 + 0.6, a2 + 0.7]))


def test_gae_ignores_padding_after_the_response():
    gamma, lam = 1.0, 0.95
    padded, _ = core.gae(t([0.0, 2.0, 5.0]), t([0.1, 0.2, 9.0]), t([1.0, 1.0, 0.0]), gamma, lam)
    short, _ = core.gae(t([0.0, 2.0]), t([0.1, 0.2]), t([1.0, 1.0]), gamma, lam)
    torch.testing.assert_close(padded[:, :2], short)
    assert padded[0, 2] == 0


def test_clipped_policy_loss_by_hand():
    old = t([0.0, 0.0, 0.0, 0.0])
    new = t([math.log(1.5), math.log(0.5), math.log(1.1), math.log(0.7)])
    adv = t([1.0, -1.0, 2.0, 1.0])
    loss, stats = core.policy_loss(new, old, adv, torch.ones(1, 4), cliprange=0.2)
    # token 0: ratio 1.5, A=+1 -> max(-1.5, -1.2) = -1.2 (clipped)
    # token 1: ratio 0.5, A=-1 -> max(0.5, 0.8) = 0.8 (clipped)
    # token 2: ratio 1.1, A=+2 -> max(-2.2, -2.2) = -2.2
    # token 3: ratio 0.7, A=+1 -> max(-0.7, -0.8) = -0.7 (unclipped is the pessimistic one)
    assert loss.item() == pytest.approx((-1.2 + 0.8 - 2.2 - 0.7) / 4, abs=1e-6)
    assert stats["clipfrac"].item() == pytest.approx(0.5)
    expected_kl = 0.5 * sum(v**2 for v in [math.log(1.5), math.log(0.5), math.log(1.1), math.log(0.7)]) / 4
    assert stats["approx_kl"].item() == pytest.approx(expected_kl, rel=1e-5)


def test_clipped_value_loss_by_hand():
    old, new, returns = t([1.0, 1.0]), t([1.5, 0.9]), t([2.0, 0.0])
    loss, stats = core.value_loss(new, old, returns, torch.ones(1, 2), cliprange_value=0.2)
    # token 0: V=1.5, clipped V=1.2 -> max((1.5-2)^2, (1.2-2)^2) = max(0.25, 0.64) = 0.64
    # token 1: V=0.9, clipped V=0.9 (inside the range) -> (0.9-0)^2 = 0.81
    assert loss.item() == pytest.approx(0.5 * (0.64 + 0.81) / 2, abs=1e-6)
    assert stats["value_clipfrac"].item() == pytest.approx(0.5)


def test_adaptive_kl_controller_moves_towards_the_target():
    ctl = core.AdaptiveKLController(0.2, target=6.0, horizon=10000)
    ctl.update(current_kl=12.0, n_steps=100)  # error clipped to +0.2
    assert ctl.value == pytest.approx(0.2 * (1 + 0.2 * 100 / 10000))
    ctl = core.AdaptiveKLController(0.2, target=6.0, horizon=10000)
    ctl.update(current_kl=3.0, n_steps=100)  # error -0.5 clipped to -0.2
    assert ctl.value == pytest.approx(0.2 * (1 - 0.2 * 100 / 10000))


def test_response_mask_stops_after_the_first_eos():
    from rlhf.methods.ppo.loop import response_mask_until_eos

    response = torch.tensor([[5, 6, 2, 7, 2], [5, 6, 7, 8, 9], [2, 2, 2, 2, 2]])
    assert response_mask_until_eos(response, eos_token_id=2).tolist() == [
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1],
        [1, 0, 0, 0, 0],
    ]
