"""The prediction-label join: each (model, version) scores an event once, whatever order and duplicates arrive in."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from driftloop.bus.partitioner import partition_for
from driftloop.services.monitoring.join import (
    PER_MESSAGE,
    JoinEntry,
    JoinRecord,
    LabelRecord,
    Outcome,
    PredictionRecord,
    SettledMarks,
    join,
    join_messages,
    join_records,
    record_from_dict,
)


def run(records: list[JoinRecord]) -> tuple[dict[str, JoinEntry], list[Outcome]]:
    """The join over a stream, with entries written out and read back as the table would hold them."""
    table: dict[str, dict[str, object]] = {}
    outcomes: list[Outcome] = []
    for record in records:
        stored = table.get(record.event_id)
        entry, found = join(JoinEntry.from_dict(stored) if stored else None, record, 0)
        table[record.event_id] = entry.to_dict()
        outcomes += found
    return {k: JoinEntry.from_dict(v) for k, v in table.items()}, outcomes


def test_a_label_scores_every_model_waiting_for_it_and_none_is_dropped() -> None:
    """Two models predict one event before its label: both are scored (a label used to overwrite the list)."""
    entries, outcomes = run(
        [
            PredictionRecord("e1", "churn", 3, 1, None, 10.0),
            PredictionRecord("e1", "fraud", 7, 0, None, 10.0),
            LabelRecord("e1", 1, 20.0),
        ]
    )
    assert [(o.model, o.version, o.correct) for o in outcomes] == [("churn", 3, True), ("fraud", 7, False)]
    assert entries["e1"].waiting == {} and sorted(entries["e1"].done) == ["churn:3", "fraud:7"]


def test_a_prediction_after_its_label_is_scored_at_once_and_a_late_second_label_changes_nothing() -> None:
    _, outcomes = run(
        [
            LabelRecord("e1", 0, 5.0),
            PredictionRecord("e1", "m", 1, 0, None, 4.0),
            LabelRecord("e1", 1, 6.0),
            PredictionRecord("e1", "m", 2, 1, None, 4.0),
        ]
    )
    assert [(o.version, o.correct, o.event_time) for o in outcomes] == [(1, True, 4.0), (2, False, 4.0)]


def test_each_version_of_a_model_is_its_own_prediction() -> None:
    _, outcomes = run(
        [
            PredictionRecord("e1", "m", 1, 1, None, 1.0),
            PredictionRecord("e1", "m", 2, 0, None, 1.0),
            LabelRecord("e1", 0, 2.0),
        ]
    )
    assert [(o.version, o.correct) for o in outcomes] == [(1, False), (2, True)]


def test_records_survive_their_wire_form() -> None:
    for record in (PredictionRecord("e", "m:x", 2, "yes", "no", 1.5), LabelRecord("e", True, 3.0)):
        assert record_from_dict(record.to_dict()) == record
    outcome = Outcome("m", 2, True, 1.0, "e", (1, 42, 3))
    assert Outcome.from_dict(outcome.to_dict()) == outcome


records = st.lists(
    st.one_of(
        st.builds(
            PredictionRecord,
            event_id=st.sampled_from(["e1", "e2", "e3"]),
            model=st.sampled_from(["a", "b"]),
            version=st.integers(1, 2),
            prediction=st.integers(0, 1),
            label=st.one_of(st.none(), st.integers(0, 1)),
            event_time=st.floats(0, 100),
        ),
        st.builds(
            LabelRecord,
            event_id=st.sampled_from(["e1", "e2", "e3"]),
            label=st.integers(0, 1),
            label_time=st.floats(0, 100),
        ),
    ),
    max_size=40,
)


@given(records, st.randoms(use_true_random=False))
def test_duplicates_never_score_twice_and_every_labelled_prediction_is_scored(
    stream: list[JoinRecord], rng: random.Random
) -> None:
    doubled = stream + [rng.choice(stream) for _ in range(len(stream) // 2)] if stream else stream
    _, outcomes = run(doubled)
    scored = [(o.event_id, o.model, o.version) for o in outcomes]
    assert len(scored) == len(set(scored)), "a (model, version) scores an event at most once"
    labelled = {r.event_id for r in doubled if r.label is not None}
    predicted = {(r.event_id, r.model, r.version) for r in doubled if isinstance(r, PredictionRecord)}
    predicted = {p for p in predicted if p[0] in labelled}
    assert set(scored) == predicted, "a prediction whose event got a label is scored"


def test_a_prediction_carrying_the_label_scores_the_other_models_waiting() -> None:
    _, outcomes = run([PredictionRecord("e1", "a", 1, 1, None, 1.0), PredictionRecord("e1", "b", 1, 0, 0, 1.0)])
    assert [(o.model, o.correct) for o in outcomes] == [("a", False), ("b", True)]


def run_bounded(records: list[JoinRecord], keep: int) -> tuple[dict[str, dict[str, object]], list[Outcome], int]:
    """The join as the stream runs it: settled entries beyond the newest ``keep`` are dropped, the rest kept.
    Returns the table, the outcomes and the largest the table grew."""
    table: dict[str, dict[str, object]] = {}
    marks = SettledMarks(keep)
    outcomes: list[Outcome] = []
    largest = 0
    for offset, record in enumerate(records):
        stored = table.get(record.event_id)
        entry, found = join(JoinEntry.from_dict(stored) if stored else None, record, 0)
        newly = entry.settle(offset)
        table[record.event_id] = entry.to_dict()
        if newly:
            marks.mark(record.event_id, offset)
        for key in marks.overflow():
            if key in table and JoinEntry.from_dict(table[key]).settled:
                del table[key]
        outcomes += found
        largest = max(largest, len(table))
    return table, outcomes, largest


def test_settled_entries_beyond_the_kept_number_go_and_a_prompt_repeat_is_still_recognised() -> None:
    """A long stream of labelled events keeps at most ``keep`` settled entries, and a routing batch repeated
    right after the original (a crash before its commit) scores nothing twice."""
    stream: list[JoinRecord] = []
    for i in range(1000):
        stream += [PredictionRecord(f"e{i}", "m", 1, i % 2, None, float(i)), LabelRecord(f"e{i}", 1, float(i))]
    repeated = stream[:1200] + stream[1180:1200] + stream[1200:]
    table, outcomes, largest = run_bounded(repeated, keep=50)
    assert largest <= 51 and len(table) == 50
    assert len(outcomes) == 1000 and len({o.event_id for o in outcomes}) == 1000


def test_a_settled_entry_still_scores_a_later_model_until_it_is_dropped() -> None:
    stream: list[JoinRecord] = [LabelRecord("e0", 1, 0.0), PredictionRecord("e0", "a", 1, 1, None, 0.0)]
    stream.append(PredictionRecord("e0", "b", 1, 1, None, 0.0))
    stream += [LabelRecord(f"x{i}", 1, 1.0) for i in range(5)]
    stream += [PredictionRecord(f"x{i}", "a", 1, 1, None, 1.0) for i in range(5)]
    table, outcomes, _ = run_bounded(stream, keep=2)
    assert [(o.event_id, o.model) for o in outcomes[:2]] == [("e0", "a"), ("e0", "b")]
    assert "e0" not in table and len(table) == 2, "scored for both models, then dropped in its turn"


def test_marks_rebuilt_after_a_recovery_keep_their_settling_order() -> None:
    entries = [
        (k, JoinEntry(at=0.0, partition=0, has_label=True, label=1, done=["m:1"], settled_at=o))
        for k, o in (("b", 7), ("a", 3), ("c", 9))
    ]
    entries.append(("w", JoinEntry(at=0.0, partition=0, has_label=False, waiting={"m:1": [1, 0.0]})))
    marks = SettledMarks.rebuilt(1, entries)
    assert marks.overflow() == ["a", "b"] and len(marks) == 1


def test_join_messages_keep_each_event_on_its_keyed_partition_in_order() -> None:
    records: list[JoinRecord] = [LabelRecord(f"e{i}", i % 2, float(i)) for i in range(3 * PER_MESSAGE)]
    messages = join_messages(records, 6)
    read = {partition: [r for p, v in messages if p == partition for r in join_records(v)] for partition in range(6)}
    assert all(len(join_records(value)) <= PER_MESSAGE for _, value in messages)
    assert len(messages) < len(records) // 10
    for partition, found in read.items():
        assert found == [r for r in records if partition_for(r.event_id.encode(), 6) == partition]
