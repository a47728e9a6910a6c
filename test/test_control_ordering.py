"""Latest-only inputs never go back in time, and a clock reset never blocks them."""

from hlrp_ros.control.ordering import arrives_out_of_order

S = 1_000_000_000


def test_an_older_message_does_not_replace_a_fresh_newer_one():
    assert arrives_out_of_order(10 * S, 11 * S, kept_age=0.1, max_age=0.5)


def test_a_newer_or_equal_message_replaces_the_kept_one():
    assert not arrives_out_of_order(11 * S, 11 * S, kept_age=0.1, max_age=0.5)
    assert not arrives_out_of_order(12 * S, 11 * S, kept_age=0.1, max_age=0.5)


def test_a_stale_kept_message_gives_way():
    assert not arrives_out_of_order(10 * S, 11 * S, kept_age=0.6, max_age=0.5)


def test_after_a_clock_reset_the_new_timeline_is_accepted():
    # the simulator restarted: the kept message was received "in the future" of the node's clock
    assert not arrives_out_of_order(1 * S, 500 * S, kept_age=-499.0, max_age=0.5)


def test_unset_stamps_are_never_judged():
    assert not arrives_out_of_order(0, 11 * S, kept_age=0.1, max_age=0.5)
    assert not arrives_out_of_order(10 * S, 0, kept_age=0.1, max_age=0.5)
