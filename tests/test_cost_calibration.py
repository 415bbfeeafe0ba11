"""The measured overhead of drafting, and the goodput controller that trusts the wall clock."""

import pytest

from aurora_rl.core.cost import CostModel
from aurora_rl.core.cost_calibration import SpeculationOverhead
from aurora_rl.policies.controllers import GoodputK

COST = CostModel.linear(draft_ratio=0.2, width_slope=0.08, max_k=8, target_seconds=1e-2)


class FakeClock:
    """Advances only when a step is 'run': each step takes what ``seconds_of(k)`` says."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_overhead_is_one_until_measured_then_the_ratio_of_ratios():
    overhead = SpeculationOverhead(COST, gamma=1.0, prior_steps=1.0)
    assert overhead.factor == 1.0
    overhead.record(0, 2 * COST.step_seconds(0))  # plain steps run 2x the model (a busy machine)
    overhead.record(4, 3 * COST.step_seconds(4))  # drafting steps 3x
    # plain: (2u + u) / (u + u) = 1.5 with u = one modelled target step (the prior);
    # drafting: (3 m4 + u) / (m4 + u)
    unit, m4 = COST.target(1), COST.step_seconds(4)
    assert overhead.ratio(False) == pytest.approx(1.5)
    assert overhead.factor == pytest.approx(((3 * m4 + unit) / (m4 + unit)) / 1.5)


def test_load_that_slows_every_step_alike_cancels():
    overhead = SpeculationOverhead(COST, gamma=0.9, prior_steps=1e-6)  # the prior barely counts
    for _ in range(200):
        for k in (0, 2, 5):
            overhead.record(k, 1.7 * COST.step_seconds(k))
    assert overhead.factor == pytest.approx(1.0, abs=1e-6)


def test_a_kind_not_played_keeps_its_last_reading():
    overhead = SpeculationOverhead(COST, gamma=0.5, prior_steps=1e-6)
    for _ in range(50):
        overhead.record(0, 2 * COST.step_seconds(0))
    plain = overhead.ratio(False)
    for _ in range(50):
        overhead.record(3, 2 * COST.step_seconds(3))
    assert overhead.ratio(False) == plain  # drafting steps do not wash out the plain reading
    assert overhead.factor == pytest.approx(1.0, rel=1e-6)


def test_one_stalled_step_counts_as_at_most_three_times_its_model():
    overhead = SpeculationOverhead(COST, gamma=1.0, prior_steps=1e-6)
    overhead.record(0, COST.step_seconds(0))
    overhead.record(4, 1000 * COST.step_seconds(4))  # a GC pause or a first-call allocation
    assert overhead.factor == pytest.approx(3.0, rel=1e-5)


@pytest.mark.parametrize("bad, message", [
    ({"gamma": 0.0}, "gamma must be in (0, 1], got 0.0"),
    ({"prior_steps": 0}, "prior_steps must be > 0, got 0"),
])
def test_bad_settings_say_what_is_wrong(bad, message):
    with pytest.raises(ValueError) as error:
        SpeculationOverhead(COST, **bad)
    assert str(error.value) == message


def drive(controller: GoodputK, clock: FakeClock, dearer: float, steps: int, accepts_up_to: int = 1) -> list[int]:
    """Steps against a draft whose first ``accepts_up_to`` proposals are always accepted, on
    a machine where a drafting step takes ``dearer`` times the model (plain steps: exactly)."""
    session = controller.start()
    for _ in range(steps):
        k = session.budget(8, 10)
        clock.now += COST.step_seconds(k) * (dearer if k else 1.0)
        session.observe(k, min(k, accepts_up_to))
    return controller.chosen[-steps:]


def test_goodput_stops_drafting_when_the_wall_clock_says_it_does_not_pay():
    # The model says k=1 pays: 2 tokens for 1.28 target steps. Measured, a drafting step
    # costs 1.7x the model (2.18 target steps for 2 tokens): the target alone is faster.
    modelled = GoodputK(COST, max_k=3)
    clock = FakeClock()
    measured = GoodputK(COST, max_k=3, overhead=SpeculationOverhead(COST, clock=clock))
    assert drive(modelled, FakeClock(), 1.7, 600)[-300:].count(1) >= 280
    assert drive(measured, clock, 1.7, 600)[-300:].count(0) >= 280
    # Between the prior's 1 and the truth, 1.7: once it stops drafting only probes add samples.
    assert 1.4 < measured.overhead.factor <= 1.7


def test_goodput_with_an_exact_model_measures_no_overhead_and_keeps_drafting():
    clock = FakeClock()
    controller = GoodputK(COST, max_k=3, overhead=SpeculationOverhead(COST, clock=clock))
    assert drive(controller, clock, 1.0, 300)[-100:].count(1) >= 95
    assert controller.overhead.factor == pytest.approx(1.0)
