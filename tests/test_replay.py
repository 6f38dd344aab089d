"""`PrioritizedTransitionBuffer`: proportional prioritized replay of n-step transitions.

No Ray is started: episodes are RLlib `SingleAgentEpisode` chunks built and cut the way env
runners hand them over. In most tests a transition is recognised by what it stores (its action,
or its observation [t]), never by the buffer's internal slot bookkeeping.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from ray.rllib.env.single_agent_episode import SingleAgentEpisode

from training.rl.replay import (
    ACTIONS,
    N_STEP,
    NEXT_OBS,
    OBS,
    REWARDS,
    TERMINATEDS,
    TRUNCATEDS,
    WEIGHTS,
    PrioritizedTransitionBuffer,
)

ALPHA, BETA, EPS = 0.6, 0.4, 0.01


def labelled_transitions(labels) -> dict[str, np.ndarray]:
    """Ready 1-step transitions whose action is their label (and observation the same number)."""
    labels = np.asarray(labels, dtype=np.int64)
    obs = labels[:, None].astype(np.float32)
    count = len(labels)
    return {
        OBS: obs,
        NEXT_OBS: obs + 1,
        ACTIONS: labels,
        REWARDS: np.zeros(count, np.float32),
        TERMINATEDS: np.zeros(count, bool),
        TRUNCATEDS: np.zeros(count, bool),
        N_STEP: np.ones(count, np.float32),
    }


def buffer_of(labels, capacity: int | None = None, **kwargs) -> PrioritizedTransitionBuffer:
    settings = {"alpha": ALPHA, "beta": BETA, "priority_epsilon": EPS, "seed": 0, **kwargs}
    buffer = PrioritizedTransitionBuffer(capacity=capacity or len(labels), **settings)
    buffer.add_transitions(labelled_transitions(labels))
    return buffer


def priorities_by_label(buffer: PrioritizedTransitionBuffer) -> dict[int, float]:
    state = buffer.get_state()
    return dict(zip(state["data"][ACTIONS].tolist(), state["priorities"].tolist(), strict=True))


def episode_chunks(
    rewards: list[float],
    *,
    terminated: bool,
    cut_after: tuple[int, ...] = (),
    episode_id: str = "0",
    obs_offset: float = 0.0,
) -> list[SingleAgentEpisode]:
    """One episode with observation [obs_offset + t] at step t and action t % 2, ending
    terminated or truncated after the last reward, handed over in chunks cut after the given
    numbers of steps (as an env runner cuts an ongoing episode at the end of each round)."""
    chunk = SingleAgentEpisode(id_=episode_id)
    chunk.add_env_reset(observation=np.array([obs_offset], np.float32))
    chunks = []
    for t, reward in enumerate(rewards):
        last = t == len(rewards) - 1
        chunk.add_env_step(
            observation=np.array([obs_offset + t + 1], np.float32),
            action=t % 2,
            reward=reward,
            terminated=last and terminated,
            truncated=last and not terminated,
        )
        if t + 1 in cut_after and not last:
            chunks.append(chunk.to_numpy())
            chunk = chunk.cut()
    return [*chunks, chunk.to_numpy()]


def transitions_by_start(buffer: PrioritizedTransitionBuffer, obs_offset: float = 0.0) -> dict:
    """Stored transitions keyed by their start step t (observation [obs_offset + t]):
    (R, next step, n, terminated, truncated)."""
    data = buffer.get_state()["data"]
    if data is None:
        return {}
    out = {}
    for i in range(len(data[ACTIONS])):
        start = float(data[OBS][i, 0]) - obs_offset
        if not 0 <= start < 100:  # another episode's transition
            continue
        assert int(start) not in out, f"step {start} stored twice"
        out[int(start)] = (
            float(data[REWARDS][i]),
            int(data[NEXT_OBS][i, 0] - obs_offset),
            int(data[N_STEP][i]),
            bool(data[TERMINATEDS][i]),
            bool(data[TRUNCATEDS][i]),
        )
    return out


# -- sampling and importance weights --------------------------------------------------------------
TD_ERRORS = np.array([0.0, 0.5, 1.0, 2.0, 4.0])
"""Known TD errors of five transitions (labels 0..4): p^alpha and p differ a lot."""


def test_sampling_frequency_is_proportional_to_priority_to_the_alpha() -> None:
    buffer = buffer_of(range(5))
    buffer.update_priorities(TD_ERRORS, indices=np.arange(5))
    priority = (TD_ERRORS + EPS) ** ALPHA
    expected = priority / priority.sum()

    draws, batch = 4000, 16
    counts = np.zeros(5)
    for _ in range(draws):
        np.add.at(counts, buffer.sample(batch)[ACTIONS], 1)
    total = draws * batch
    frequency = counts / total
    # Five binomial standard errors for 64,000 independent draws (stratified sampling is less
    # variable still): about 0.008, while p (no alpha) instead of p^alpha is off by up to 0.16.
    tolerance = 5 * np.sqrt(expected * (1 - expected) / total)
    assert np.all(np.abs(frequency - expected) < tolerance), (frequency, expected)
    unshaped = (TD_ERRORS + EPS) / (TD_ERRORS + EPS).sum()
    assert np.any(np.abs(frequency - unshaped) > 10 * tolerance)


def test_importance_weights_are_normalised_by_the_largest_over_the_whole_buffer() -> None:
    td = np.array([0.0, 5.0, 5.0, 5.0, 5.0])  # label 0 is rarely drawn, yet sets the maximum
    buffer = buffer_of(range(5))
    buffer.update_priorities(td, indices=np.arange(5))
    priority = (td + EPS) ** ALPHA
    n_times_p = len(td) * priority / priority.sum()  # N P(i)
    max_weight = np.max(n_times_p**-BETA)

    batch = buffer.sample(64)
    labels = batch[ACTIONS]
    assert np.allclose(batch[WEIGHTS], n_times_p[labels] ** -BETA / max_weight, rtol=1e-6)
    assert np.all((batch[WEIGHTS] > 0) & (batch[WEIGHTS] <= 1))
    assert batch[WEIGHTS][labels != 0].max() < 0.5  # a batch-wise maximum would give 1 here
    # beta given to sample() overrides the buffer's
    full = buffer.sample(64, beta=1.0)
    expected_full = n_times_p[full[ACTIONS]] ** -1.0 / np.max(n_times_p**-1.0)
    assert np.allclose(full[WEIGHTS], expected_full, rtol=1e-6)


def test_new_transitions_get_the_largest_priority_seen_so_far() -> None:
    buffer = buffer_of(range(3), capacity=10)
    assert set(priorities_by_label(buffer).values()) == {1.0}  # nothing seen yet: 1
    buffer.update_priorities(np.array([0.5, 3.0, 1.0]), indices=np.arange(3))
    buffer.add_transitions(labelled_transitions([3]))
    assert priorities_by_label(buffer)[3] == pytest.approx((3.0 + EPS) ** ALPHA)

    # The largest ever seen, even once that transition's own priority has come down.
    buffer.update_priorities(np.array([0.1, 0.1, 0.1, 0.1]), indices=np.arange(4))
    buffer.add_transitions(labelled_transitions([4]))
    priorities = priorities_by_label(buffer)
    assert priorities[4] == pytest.approx((3.0 + EPS) ** ALPHA)
    assert priorities[1] == pytest.approx((0.1 + EPS) ** ALPHA)


def test_a_zero_td_error_leaves_the_priority_floor_so_weights_do_not_collapse() -> None:
    """RLlib's buffer floors priorities at 1e-12: one transition with a TD error of ~0 then
    shrinks every importance weight (they are divided by the largest, set by the smallest
    priority) and learning stalls. Here the floor is priority_epsilon^alpha."""
    buffer = buffer_of(range(200))
    sampled = buffer.sample(64)
    buffer.update_priorities(np.zeros(64))
    floored = set(sampled[ACTIONS].tolist())
    priorities = priorities_by_label(buffer)
    assert [priorities[label] for label in floored] == pytest.approx([EPS**ALPHA] * len(floored))
    assert min(priorities.values()) == pytest.approx(EPS**ALPHA)

    weights = buffer.sample(256)[WEIGHTS]
    # Unfloored transitions (priority 1) weigh (1 / EPS^ALPHA)^-BETA = 0.33 here; with RLlib's
    # 1e-12 floor they would weigh (1 / 1e-12^ALPHA)^-BETA, about 0.0013.
    assert weights.mean() > 0.2
    with pytest.raises(ValueError, match="priority_epsilon"):
        PrioritizedTransitionBuffer(capacity=10, priority_epsilon=0.0)


def test_a_slot_overwritten_after_sampling_keeps_its_new_priority() -> None:
    buffer = buffer_of(range(4), capacity=4)
    sampled = set(buffer.sample(4)[ACTIONS].tolist())
    assert {0, 1} <= sampled  # the two oldest, which are overwritten next
    buffer.add_transitions(labelled_transitions([4, 5]))  # into the slots of 0 and 1
    buffer.update_priorities(np.zeros(4))  # the TD errors of the batch sampled before

    priorities = priorities_by_label(buffer)
    assert set(priorities) == {2, 3, 4, 5}
    assert priorities[4] == priorities[5] == 1.0  # new transitions: the largest priority so far
    for label in sampled - {0, 1}:
        assert priorities[label] == pytest.approx(EPS**ALPHA)


def test_capacity_wrap_around_keeps_the_newest_transitions() -> None:
    buffer = buffer_of(range(3), capacity=5)
    buffer.add_transitions(labelled_transitions([3, 4, 5, 6]))
    assert len(buffer) == 5
    assert set(priorities_by_label(buffer)) == {2, 3, 4, 5, 6}
    buffer.add_transitions(labelled_transitions([7]))  # the oldest (2) goes first
    assert set(priorities_by_label(buffer)) == {3, 4, 5, 6, 7}
    assert set(buffer.sample(200)[ACTIONS].tolist()) == {3, 4, 5, 6, 7}

    buffer.add_transitions(labelled_transitions(range(10, 22)))  # more than capacity at once
    assert set(priorities_by_label(buffer)) == {17, 18, 19, 20, 21}


# -- n-step transitions from episode chunks -------------------------------------------------------
REWARDS_5 = [1.0, 2.0, 3.0, 4.0, 10.0]
GAMMA = 0.5

# Worked by hand for the 5-step episode above (observation [t] at step t, obs_5 the last):
# start t -> (R_t, bootstrap step t + n_t, n_t, reaches the end of the episode).
BY_HAND = {
    1: {
        0: (1.0, 1, 1, False),
        1: (2.0, 2, 1, False),
        2: (3.0, 3, 1, False),
        3: (4.0, 4, 1, False),
        4: (10.0, 5, 1, True),
    },
    3: {
        0: (1 + 0.5 * 2 + 0.25 * 3, 3, 3, False),  # 2.75
        1: (2 + 0.5 * 3 + 0.25 * 4, 4, 3, False),  # 4.5
        2: (3 + 0.5 * 4 + 0.25 * 10, 5, 3, True),  # 7.5: its 3 steps reach the end
        3: (4 + 0.5 * 10, 5, 2, True),  # 9.0: only 2 steps left
        4: (10.0, 5, 1, True),
    },
}


def expected_transitions(n_step: int, terminated: bool) -> dict:
    """BY_HAND with the episode's ending: a terminated end does not bootstrap (terminated),
    a truncated one (time limit) does, from obs_5 (truncated, not terminated)."""
    return {
        t: (ret, nxt, n, at_end and terminated, at_end and not terminated)
        for t, (ret, nxt, n, at_end) in BY_HAND[n_step].items()
    }


@pytest.mark.parametrize("terminated", [True, False], ids=["terminated", "truncated"])
@pytest.mark.parametrize("n_step", [1, 3])
def test_n_step_transitions_of_a_whole_episode(n_step: int, terminated: bool) -> None:
    buffer = PrioritizedTransitionBuffer(capacity=100, n_step=n_step, gamma=GAMMA)
    assert buffer.add(episode_chunks(REWARDS_5, terminated=terminated)) == 5
    assert transitions_by_start(buffer) == expected_transitions(n_step, terminated)


@pytest.mark.parametrize("cut_after", [(2,), (3,), (1, 3), (1, 2, 3, 4)])
@pytest.mark.parametrize("terminated", [True, False], ids=["terminated", "truncated"])
@pytest.mark.parametrize("n_step", [1, 3])
def test_n_step_transitions_of_an_episode_delivered_in_chunks(
    n_step: int, terminated: bool, cut_after: tuple[int, ...]
) -> None:
    """A chunk's last n-1 steps wait for the episode's next chunk; another episode whose chunks
    arrive in the same calls keeps its own tail (obs offset by 100)."""
    buffer = PrioritizedTransitionBuffer(capacity=100, n_step=n_step, gamma=GAMMA)
    ours = episode_chunks(REWARDS_5, terminated=terminated, cut_after=cut_after, episode_id="a")
    other = episode_chunks(
        REWARDS_5, terminated=not terminated, cut_after=cut_after, episode_id="b", obs_offset=100
    )
    for round_, (mine, theirs) in enumerate(zip(ours, other, strict=True)):
        buffer.add([mine, theirs])
        steps_so_far = cut_after[round_] if round_ < len(cut_after) else len(REWARDS_5)
        # only transitions whose n steps are all known so far (all of them once the episode ended)
        complete = steps_so_far == len(REWARDS_5)
        ready = range(steps_so_far if complete else max(0, steps_so_far - n_step + 1))
        assert set(transitions_by_start(buffer)) == set(ready)
    assert transitions_by_start(buffer) == expected_transitions(n_step, terminated)
    assert transitions_by_start(buffer, obs_offset=100) == expected_transitions(
        n_step, not terminated
    )
    assert buffer.get_metrics()["num_pending_tails"] == 0


def test_a_tail_whose_episode_never_continues_is_closed_as_shorter_bootstrapped_returns() -> None:
    """If an episode's next chunk never comes (its env runner died), its pending steps are
    written after a while as k-step returns that bootstrap from the last observation."""
    buffer = PrioritizedTransitionBuffer(capacity=100, n_step=3, gamma=GAMMA)
    first_chunk = episode_chunks(REWARDS_5, terminated=True, cut_after=(3,))[0]
    buffer.add([first_chunk])
    assert set(transitions_by_start(buffer)) == {0}
    for _ in range(60):
        buffer.add([])
    assert transitions_by_start(buffer) == {
        0: (2.75, 3, 3, False, False),
        1: (2 + 0.5 * 3, 3, 2, False, False),
        2: (3.0, 3, 1, False, False),
    }


# -- state ----------------------------------------------------------------------------------------
def test_state_round_trip_gives_identical_samples_and_keeps_pending_tails() -> None:
    chunks = episode_chunks(REWARDS_5 * 4, terminated=True, cut_after=(7,))
    buffer = PrioritizedTransitionBuffer(
        capacity=50, alpha=ALPHA, beta=BETA, n_step=3, gamma=GAMMA, seed=1
    )
    buffer.add([chunks[0]])
    buffer.sample(8)
    buffer.update_priorities(np.linspace(0, 3, 8))
    state = pickle.loads(pickle.dumps(buffer.get_state()))  # as a checkpoint stores it

    restored = PrioritizedTransitionBuffer(
        capacity=50, alpha=ALPHA, beta=BETA, n_step=3, gamma=GAMMA, seed=99
    )
    restored.set_state(state)
    for _ in range(3):
        a, b = buffer.sample(16), restored.sample(16)
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    # the pending tail came back too: the episode's next chunk completes it in both
    buffer.add([chunks[1]])
    restored.add([chunks[1]])
    assert transitions_by_start(restored) == transitions_by_start(buffer)
    assert len(restored) == len(REWARDS_5 * 4)


def test_set_state_refuses_another_n_step() -> None:
    buffer = PrioritizedTransitionBuffer(capacity=20, n_step=3, gamma=GAMMA)
    buffer.add(episode_chunks(REWARDS_5, terminated=True))
    other = PrioritizedTransitionBuffer(capacity=20, n_step=1, gamma=GAMMA)
    with pytest.raises(ValueError, match="3-step returns; this run uses n_step=1"):
        other.set_state(buffer.get_state())


def test_set_state_with_another_gamma_or_alpha_recomputes_returns_and_priorities() -> None:
    """PBT perturbs gamma and alpha and restores the buffer into the perturbed trial: the
    n-step returns are summed again with the new gamma, priorities raised to the new alpha."""
    buffer = PrioritizedTransitionBuffer(capacity=20, n_step=3, gamma=GAMMA, alpha=ALPHA)
    buffer.add(episode_chunks(REWARDS_5, terminated=True))
    state = buffer.get_state()
    other = PrioritizedTransitionBuffer(capacity=20, n_step=3, gamma=0.9, alpha=1.0)
    other.set_state(state)
    fresh = PrioritizedTransitionBuffer(capacity=20, n_step=3, gamma=0.9)
    fresh.add(episode_chunks(REWARDS_5, terminated=True))
    restored, expected = transitions_by_start(other), transitions_by_start(fresh)
    assert restored.keys() == expected.keys()
    for start, (ret, *rest) in expected.items():
        assert restored[start][0] == pytest.approx(ret, rel=1e-6)
        assert restored[start][1:] == tuple(rest)
    raised = other.get_state()["priorities"]
    np.testing.assert_allclose(raised, np.asarray(state["priorities"]) ** (1.0 / ALPHA))
