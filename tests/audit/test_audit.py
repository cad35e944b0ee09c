"""The pure audit core: sealing, redaction, and every kind of damage found at the right seq."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.audit.records import (
    GENESIS,
    InMemorySigner,
    Record,
    canonical,
    checkpoint_body,
    checkpoint_message,
    redact,
    seal,
    verify_lines,
)


def chain(n: int, start: int = 1, prev: str = GENESIS) -> list[Record]:
    records = []
    for seq in range(start, start + n):
        record = seal(
            {"type": "decision", "request_id": f"req_{seq}", "outcome": "allow"}, prev, seq
        )
        records.append(record)
        prev = record.hash
    return records


def lines_of(records: list[Record]) -> list[bytes]:
    return [r.line for r in records]


def test_seal_links_records_from_genesis() -> None:
    """seq counts from 1, prev is the previous hash, and the first prev is GENESIS."""
    records = chain(3)
    assert [r.seq for r in records] == [1, 2, 3]
    assert records[0].prev == GENESIS
    assert records[1].prev == records[0].hash
    assert records[2].fields["prev"] == records[1].hash


def test_hash_covers_the_record_without_its_hash() -> None:
    """hash is sha256 over the canonical record minus hash, so anyone can recompute it."""
    import hashlib

    record = seal({"b": 1, "a": "x"}, GENESIS, 1)
    unsealed = {k: v for k, v in record.fields.items() if k != "hash"}
    assert record.hash == "sha256:" + hashlib.sha256(canonical(unsealed)).hexdigest()


def test_line_is_canonical_json() -> None:
    """Sorted keys, no whitespace, ASCII only, one trailing newline."""
    line = seal({"z": "é", "a": [1, 2]}, GENESIS, 1).line
    assert line.startswith(b'{"a":[1,2],"hash":')
    assert b" " not in line
    assert b"\\u00e9" in line
    assert line.count(b"\n") == 1
    assert line.endswith(b"\n")


@pytest.mark.parametrize("key", ["seq", "prev", "hash"])
def test_body_cannot_set_chain_fields(key: str) -> None:
    """A caller cannot choose its own seq, prev or hash."""
    with pytest.raises(ValueError, match=key):
        seal({key: 1}, GENESIS, 1)


def test_intact_chain_verifies() -> None:
    """An untouched trail is ok, with its count and head."""
    records = chain(5)
    result = verify_lines(lines_of(records))
    assert result.ok
    assert result.count == 5
    assert result.head_hash == records[-1].hash
    assert result.first_bad_seq is None


def test_empty_trail_is_intact() -> None:
    """No lines is a valid (empty) trail."""
    assert verify_lines([]).ok


def test_flipped_byte_is_found_at_its_line() -> None:
    """Flipping one bit anywhere in line 4 is reported at seq 4."""
    base = lines_of(chain(6))
    body_len = len(base[3]) - 1
    for pos in range(body_len):
        lines = list(base)
        mutated = bytearray(lines[3])
        mutated[pos] ^= 0x01
        lines[3] = bytes(mutated)
        result = verify_lines(lines)
        assert not result.ok, pos
        assert result.first_bad_seq == 4, (pos, result.problem)


def test_deleted_line_is_found() -> None:
    """Removing record 3 is reported at seq 3 as missing."""
    lines = lines_of(chain(6))
    del lines[2]
    result = verify_lines(lines)
    assert (result.ok, result.first_bad_seq, result.count) == (False, 3, 2)
    assert "deleted" in result.problem


def test_inserted_copy_is_found() -> None:
    """A copy of an earlier record inserted after record 4 is reported at seq 5."""
    lines = lines_of(chain(6))
    lines.insert(4, lines[1])
    result = verify_lines(lines)
    assert (result.ok, result.first_bad_seq) == (False, 5)
    assert "inserted" in result.problem


def test_forged_record_inserted_with_a_valid_hash_is_found() -> None:
    """A well-formed forged seq 5 chained after 4 breaks the chain at the genuine seq 5."""
    records = chain(6)
    forged = seal({"type": "decision", "request_id": "req_forged"}, records[3].hash, 5)
    lines = lines_of(records)
    lines.insert(4, forged.line)
    result = verify_lines(lines)
    assert (result.ok, result.first_bad_seq) == (False, 6)


def test_reordered_lines_are_found() -> None:
    """Swapping records 4 and 5 is reported at seq 4."""
    lines = lines_of(chain(6))
    lines[3], lines[4] = lines[4], lines[3]
    result = verify_lines(lines)
    assert (result.ok, result.first_bad_seq) == (False, 4)


def test_replaced_record_with_a_valid_hash_is_found() -> None:
    """A rewritten record 3, resealed after 2, breaks at 4 whose prev no longer matches."""
    records = chain(5)
    lines = lines_of(records)
    lines[2] = seal({"type": "decision", "outcome": "deny"}, records[1].hash, 3).line
    result = verify_lines(lines)
    assert (result.ok, result.first_bad_seq) == (False, 4)
    assert "prev" in result.problem


@pytest.mark.parametrize(
    ("bad_line", "needle"),
    [
        (b"not json\n", "not valid JSON"),
        (b"[1,2]\n", "not an object"),
        (b'{"seq":3}\n', "not a chained record"),
        (b"\xff\xfe\n", "not valid JSON"),
    ],
)
def test_bad_line_is_named(bad_line: bytes, needle: str) -> None:
    """Garbage in place of record 3 is reported at seq 3 with what is wrong."""
    lines = lines_of(chain(4))
    lines[2] = bad_line
    result = verify_lines(lines)
    assert (result.ok, result.first_bad_seq) == (False, 3)
    assert needle in result.problem


def test_non_canonical_line_is_found() -> None:
    """Re-serialising a record with spaces (same JSON value) is an edit."""
    lines = lines_of(chain(3))
    value = json.loads(lines[1])
    lines[1] = json.dumps(value, sort_keys=True).encode() + b"\n"
    result = verify_lines(lines)
    assert (result.ok, result.first_bad_seq) == (False, 2)
    assert "canonical" in result.problem


def test_duplicate_key_smuggling_is_found() -> None:
    """A line with a duplicated key (readers disagree which wins) is not canonical."""
    lines = lines_of(chain(2))
    lines[1] = lines[1].replace(b'{"hash"', b'{"outcome":"deny","hash"', 1)
    result = verify_lines(lines)
    assert (result.ok, result.first_bad_seq) == (False, 2)


def test_torn_final_line_is_found() -> None:
    """A last line cut short (no newline) is damage at its seq."""
    lines = lines_of(chain(3))
    lines[2] = lines[2][:20]
    result = verify_lines(lines)
    assert (result.ok, result.first_bad_seq) == (False, 3)
    assert "torn" in result.problem


def test_newline_in_a_field_cannot_forge_a_record() -> None:
    """A value carrying a newline and a fake record stays inside one escaped line."""
    hostile = '\n{"seq":2,"prev":"sha256:00","hash":"sha256:00","outcome":"allow"}\n'
    record = seal({"output": hostile, "reason": "\r\u2028\x00"}, GENESIS, 1)
    assert record.line.count(b"\n") == 1
    result = verify_lines(record.line.splitlines(keepends=True))
    assert result.ok
    assert result.count == 1


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
bodies = st.dictionaries(
    st.text().filter(lambda k: k not in {"seq", "prev", "hash"}), json_values, max_size=6
)


@given(body=bodies)
def test_any_body_seals_to_one_line_and_round_trips(body: dict[str, Any]) -> None:
    """Whatever the body holds, its record is exactly one line that parses back and verifies."""
    record = seal(body, GENESIS, 1)
    line = record.line
    assert line.count(b"\n") == 1
    assert b"\r" not in line
    assert json.loads(line) == dict(record.fields)
    assert {k: v for k, v in json.loads(line).items() if k not in {"seq", "prev", "hash"}} == body
    assert verify_lines(line.splitlines(keepends=True)).ok


def test_redact_replaces_only_listed_fields_with_keyed_hashes() -> None:
    """Listed inputs become hmac-sha256:<hex>; others are untouched; the input is not mutated."""
    inputs = {"email": "a@example.com", "amount_usd": 120, "ticket_id": "CS-1"}
    out = redact(inputs, ["email", "amount_usd", "absent"], b"k" * 32)
    assert out["ticket_id"] == "CS-1"
    assert out["email"].startswith("hmac-sha256:")
    assert len(out["email"]) == len("hmac-sha256:") + 64
    assert "a@example.com" not in json.dumps(out)
    assert "absent" not in out
    assert inputs["email"] == "a@example.com"


def test_redact_correlates_equal_values_but_depends_on_key_and_type() -> None:
    """Same value and key give the same hash; a different key or type gives another."""
    key = b"k" * 32
    first = redact({"v": "x"}, ["v"], key)["v"]
    assert redact({"v": "x"}, ["v"], key)["v"] == first
    assert redact({"v": "x"}, ["v"], b"other")["v"] != first
    assert redact({"v": 120}, ["v"], key)["v"] != redact({"v": "120"}, ["v"], key)["v"]


def with_checkpoint(
    signer: InMemorySigner, records: list[Record], agent: str = "a1", claimed: str | None = None
) -> list[Record]:
    """``records`` and a checkpoint signed for ``agent``, whose body names ``claimed``."""
    head = records[-1]
    signature, version = signer.sign(checkpoint_message(head.seq, head.hash, agent))
    when = "2026-03-18T14:02:11Z"
    body = checkpoint_body(head.seq, head.hash, signature, version, when, agent=claimed or agent)
    return [*records, seal(body, head.hash, head.seq + 1)]


def test_checkpoint_is_chained_and_reported() -> None:
    """A checkpoint record verifies as part of the chain and is returned as the last one."""
    signer = InMemorySigner()
    records = with_checkpoint(signer, chain(3))
    result = verify_lines(lines_of(records), public_keys=signer.public_keys())
    assert result.ok
    assert result.last_checkpoint is not None
    assert result.last_checkpoint["head_seq"] == 3


def test_checkpoint_signed_by_another_key_is_found() -> None:
    """A checkpoint whose signature is not by the published key is damage at its seq."""
    records = with_checkpoint(InMemorySigner(), chain(3))
    result = verify_lines(lines_of(records), public_keys=InMemorySigner().public_keys())
    assert (result.ok, result.first_bad_seq) == (False, 4)
    assert "signature" in result.problem


def test_checkpoint_moved_to_another_agents_trail_is_found() -> None:
    """A checkpoint signed for agent a1 (same key, same head) does not verify in a2's trail:
    naming a2 breaks the signature, naming a1 is refused by a verifier expecting a2."""
    signer = InMemorySigner()
    records = chain(3)
    relabelled = with_checkpoint(signer, records, agent="a1", claimed="a2")
    result = verify_lines(lines_of(relabelled), public_keys=signer.public_keys(), agent="a2")
    assert (result.ok, result.first_bad_seq) == (False, 4)
    assert "signature" in result.problem
    moved = with_checkpoint(signer, records, agent="a1")
    result = verify_lines(lines_of(moved), public_keys=signer.public_keys(), agent="a2")
    assert (result.ok, result.first_bad_seq) == (False, 4)
    assert "names agent 'a1'" in result.problem
    assert verify_lines(lines_of(moved), public_keys=signer.public_keys(), agent="a1").ok


def test_checkpoint_naming_a_wrong_head_is_found() -> None:
    """A checkpoint whose head_hash is not the hash of head_seq is damage."""
    signer = InMemorySigner()
    records = chain(3)
    signature, version = signer.sign(checkpoint_message(2, records[2].hash, "a1"))
    body = checkpoint_body(2, records[2].hash, signature, version, "t", agent="a1")
    lines = [*lines_of(records), seal(body, records[2].hash, 4).line]
    result = verify_lines(lines)
    assert (result.ok, result.first_bad_seq) == (False, 4)
    assert "head_hash" in result.problem


def test_truncation_behind_a_published_head_is_found() -> None:
    """A file that ends before the head published outside it is damage."""
    records = chain(5)
    result = verify_lines(lines_of(records[:3]), published_head=(5, records[4].hash))
    assert (result.ok, result.first_bad_seq) == (False, 4)
    assert "removed" in result.problem


def test_rewrite_at_the_published_head_is_found() -> None:
    """A file whose record at the published seq has another hash is damage there."""
    records = chain(5)
    result = verify_lines(lines_of(records), published_head=(4, "sha256:" + "1" * 64))
    assert (result.ok, result.first_bad_seq) == (False, 4)
