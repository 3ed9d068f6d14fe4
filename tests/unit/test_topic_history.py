"""Reading a topic's offsets right after it was created: the broker may have no partition
leader for a moment, and the replay must wait it out rather than fail."""

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from state.topic_history import TopicError, _watermarks


class LeaderlessAtFirst:
    """A consumer whose broker answers `Not leader for partition` `failures` times."""

    def __init__(self, failures: int, code: int = KafkaError.NOT_LEADER_FOR_PARTITION):
        self.failures, self.code, self.calls = failures, code, 0

    def get_watermark_offsets(self, partition, timeout):
        self.calls += 1
        if self.calls <= self.failures:
            raise KafkaException(KafkaError(self.code))
        return 0, 42


def test_a_partition_without_a_leader_yet_is_asked_again():
    consumer = LeaderlessAtFirst(failures=2)
    assert _watermarks(consumer, TopicPartition("t", 0), timeout_s=5) == (0, 42)
    assert consumer.calls == 3


def test_a_lasting_or_final_error_names_the_partition():
    with pytest.raises(TopicError, match=r"t \[0\].*Not leader"):
        _watermarks(LeaderlessAtFirst(failures=10**6), TopicPartition("t", 0), timeout_s=0.3)
    with pytest.raises(TopicError, match="t \\[1\\]"):
        _watermarks(LeaderlessAtFirst(failures=1, code=KafkaError.TOPIC_AUTHORIZATION_FAILED),
                    TopicPartition("t", 1), timeout_s=5)
