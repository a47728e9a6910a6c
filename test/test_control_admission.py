"""Chunk admission across policy runs: observation time orders chunks, ids only within a run."""

from __future__ import annotations

from hlrp_ros.control.admission import ChunkAdmission


def admitted(adm: ChunkAdmission, run: str, chunk_id: int, stamp: float) -> bool:
    verdict = adm.check(run, chunk_id, stamp)
    if verdict.accepted:
        adm.admit(run, chunk_id, stamp)
    return verdict.accepted


def test_a_run_advances_with_newer_observations_or_higher_ids_on_the_same_one():
    adm = ChunkAdmission()
    assert admitted(adm, "a", 1, 10.0)
    assert admitted(adm, "a", 2, 10.5)
    assert admitted(adm, "a", 3, 10.5)  # no new camera frame: same observation, next id
    assert not admitted(adm, "a", 2, 10.4)
    assert adm.check("a", 2, 10.4).reason == "older_observation"


def test_a_replayed_chunk_is_refused():
    adm = ChunkAdmission()
    assert admitted(adm, "a", 7, 10.0)
    verdict = adm.check("a", 7, 10.0)
    assert not verdict.accepted and verdict.reason == "replayed"


def test_a_restarted_policy_takes_over_with_its_first_chunk_and_the_old_run_is_retired():
    adm = ChunkAdmission()
    for i in range(1, 44):
        assert admitted(adm, "old", i, 10.0 + 0.1 * i)
    verdict = adm.check("new", 1, 20.0)  # ids start again at 1; its observation is newer
    assert verdict.accepted and verdict.took_over == "old" and "took over" in verdict.message
    adm.admit("new", 1, 20.0)
    assert admitted(adm, "new", 2, 20.3)
    late = adm.check("old", 44, 30.0)  # even with a newer observation, the replaced run never executes again
    assert not late.accepted and late.reason == "retired_run" and "still publishing" in late.message


def test_another_run_with_an_older_observation_does_not_take_over():
    adm = ChunkAdmission()
    assert admitted(adm, "a", 1, 10.0)
    assert adm.check("b", 1, 9.9).reason == "older_observation"
    assert admitted(adm, "a", 2, 10.1)  # "a" was not retired by the refused chunk


def test_an_absurd_id_shadows_only_its_own_observation():
    adm = ChunkAdmission()
    assert admitted(adm, "a", 3, 10.0)
    assert admitted(adm, "a", 2**64 - 1, 10.1)
    assert not admitted(adm, "a", 4, 10.1)  # same observation: the absurd id wins this once
    assert admitted(adm, "a", 5, 10.2)  # the run's next observation gets through


def test_a_clock_reset_forgets_the_last_stamp_but_not_retired_runs():
    adm = ChunkAdmission()
    assert admitted(adm, "old", 1, 100.0)
    assert admitted(adm, "new", 1, 101.0)
    assert not admitted(adm, "new", 2, 1.0)  # the simulator restarted at t = 0
    adm.clock_reset()
    assert admitted(adm, "new", 2, 1.0)
    assert adm.check("old", 2, 2.0).reason == "retired_run"


def test_retired_runs_are_remembered_up_to_a_bound():
    adm = ChunkAdmission(retired_memory=3)
    for k in range(5):
        assert admitted(adm, f"run{k}", 1, float(k))
    assert len(adm.retired) == 3 and "run0" not in adm.retired and "run3" in adm.retired
