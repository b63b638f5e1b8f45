"""The packed message index against a plain model: adds in any order, expunges, repacks,
relocations, listings that go on from a seq."""

from __future__ import annotations

import random
import secrets

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.log import Location
from gateway.services import message_index
from gateway.services.message_index import MessageIndex, StoredMessage


def message(seq: int, chunks: int = 1, key_id: str = "k1") -> StoredMessage:
    return StoredMessage(
        message_id=secrets.token_hex(16),
        seq=seq,
        size=1000 + seq,
        key_id=key_id,
        commit=Location(0, 100 * seq + 50, 80, seq),
        chunks=[Location(0, 100 * seq + 10 * i, 40, seq - chunks + i) for i in range(chunks)],
    )


def check(index: MessageIndex, model: dict[str, StoredMessage]) -> None:
    expected = sorted(model.values(), key=lambda m: m.seq)
    assert list(index) == expected
    assert len(index) == len(model)
    assert index.total_bytes == sum(m.size for m in model.values())
    for m in expected:
        assert m.message_id in index
        assert index.get(m.message_id) == m


@settings(max_examples=60)
@given(
    st.lists(st.tuples(st.sampled_from(["add", "expunge"]), st.integers(0, 10**6)), max_size=300)
)
def test_matches_a_dict(ops: list[tuple[str, int]]) -> None:
    rng = random.Random(len(ops))
    index, model = MessageIndex(), dict[str, StoredMessage]()
    seq = 0
    for op, n in ops:
        if op == "add" or not model:
            seq += 3
            # Now and then a commit lands a little out of order.
            m = message(seq - 3 * (n % 4) if n % 7 == 0 and seq > 12 else seq, 1 + n % 3)
            if any(x.seq == m.seq for x in model.values()):
                continue
            index.add(m)
            model[m.message_id] = m
        else:
            gone = rng.sample(sorted(model), k=1 + n % len(model))
            index.expunge(gone)
            for message_id in gone:
                del model[message_id]
                assert message_id not in index
                assert index.get(message_id) is None
    check(index, model)


def test_repacks_when_most_rows_are_dead() -> None:
    index = MessageIndex()
    kept: dict[str, StoredMessage] = {}
    for seq in range(1, 5001):
        m = message(seq * 2, chunks=2, key_id=f"k{seq % 3}")
        index.add(m)
        kept[m.message_id] = m
    gone = [m for m in list(kept) if kept[m].seq % 10]
    index.expunge(gone)
    for message_id in gone:
        del kept[message_id]
    check(index, kept)
    assert index.live_seqs() == {
        s for m in kept.values() for s in (m.seq, *(c.seq for c in m.chunks))
    }
    assert all(message_id in index.expunged for message_id in gone)
    index.forget_expunged(gone)
    assert not index.expunged


@settings(max_examples=40)
@given(st.lists(st.tuples(st.integers(1, 3), st.booleans()), min_size=20, max_size=200))
def test_repacks_keep_every_shape_of_message(shapes: list[tuple[int, bool]]) -> None:
    """Repacks (forced early) of one-chunk messages in order (the quick path) and of several
    chunks or late commits (chunks out of row order) serve what a plain model does."""
    saved = message_index._REPACK_MIN_DEAD
    message_index._REPACK_MIN_DEAD = 1
    try:
        index, model = MessageIndex(), dict[str, StoredMessage]()
        seq = 100
        for n, (chunks, late) in enumerate(shapes):
            seq += 10
            m = message(seq - 25 if late and n > 3 else seq, chunks)
            if any(x.seq == m.seq for x in model.values()):
                continue
            index.add(m)
            model[m.message_id] = m
            if n % 5 == 4:  # more than half of them go: a repack
                gone = sorted(model)[: len(model) // 2 + 1]
                index.expunge(gone)
                for message_id in gone:
                    del model[message_id]
            check(index, model)
    finally:
        message_index._REPACK_MIN_DEAD = saved


def test_a_listing_goes_on_after_a_seq_and_stops_at_its_end() -> None:
    index = MessageIndex()
    messages = [message(seq) for seq in range(10, 200, 10)]
    for m in messages:
        index.add(m)
    assert [m.seq for m in index.after(55, upto=120)] == [60, 70, 80, 90, 100, 110, 120]
    assert index.last_seq == 190
    assert list(index.after(190)) == []


def test_relocate_moves_commits_and_chunks() -> None:
    index = MessageIndex()
    a, b = message(10, chunks=2), message(20)
    index.add(a)
    index.add(b)
    moved = {9: Location(5, 1, 40, 9), 20: Location(5, 2, 80, 20)}
    index.relocate(moved)
    got_a, got_b = index.get(a.message_id), index.get(b.message_id)
    assert got_a is not None and got_b is not None
    assert got_a.chunks == [a.chunks[0], Location(5, 1, 40, 9)]
    assert got_a.commit == a.commit
    assert got_b.commit == Location(5, 2, 80, 20)


def test_ids_that_are_not_ids_are_not_found() -> None:
    index = MessageIndex()
    index.add(message(1))
    assert "nothex" not in index
    assert index.get("00" * 8) is None
    assert 5 not in index


def test_source_keys() -> None:
    index = MessageIndex()
    key = "ab" * 32
    index.add(message(1), source_key=key)
    index.add(message(2), source_key="legacy-not-hex")
    assert index.has_source(key)
    assert index.has_source("legacy-not-hex")
    assert not index.has_source("cd" * 32)


def test_a_maildrop_in_brief_pages_is_every_live_message_of_the_key() -> None:
    index = MessageIndex()
    for seq in range(1, 20_001):
        index.add(message(seq * 2, key_id="old" if seq % 997 == 0 else "new"))
    index.expunge([m.message_id for m in index if m.seq % 13 == 0])
    expected = [m for m in index if m.key_id == "new" and m.seq <= 30_000]
    ids, sizes = b"", list[int]()
    after: int | None = -1
    pages = 0
    while after is not None:
        more_ids, more_sizes, after = index.brief(after, 30_000, "new", 5_000)
        assert len(more_sizes) <= 5_000
        ids, sizes, pages = ids + more_ids, sizes + more_sizes, pages + 1
    assert pages >= 3
    assert [ids[i : i + 16].hex() for i in range(0, len(ids), 16)] == [
        m.message_id for m in expected
    ]
    assert sizes == [m.size for m in expected]
    assert index.brief(-1, 30_000, "no such key", 10) == (b"", [], None)
