"""The MQTT message contracts (greengate/messages.py): what the kiosk builds parses,
and what a broken or hostile publisher sends is a MessageError, never a crash."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from greengate import messages
from greengate.messages import MessageError

K = "hcm-q7-0001"


def scan(**changes) -> dict:
    doc = messages.scan(scan_id="0123456789abcdef0123456789abcdef", kiosk=K, ts=1633420800.5,
                        decision="red", reason="revoked", sub_reason=None, cert_type="v",
                        cert_hash="ab" * 16, holder="cd" * 16, policy="hcmc-2021")
    doc.update(changes)
    return doc


def summary(**changes) -> dict:
    doc = messages.summary(summary_id="s0123456789abcdef", kiosk=K, hour=1633420800,
                           decision="green", reason="ok", count=3, first=1633420801.0,
                           last=1633420900.0)
    doc.update(changes)
    return doc


def heartbeat(**changes) -> dict:
    doc = messages.heartbeat(kiosk=K, session=4, ts=1633420800.0, uptime=12.5,
                             bundles={"trust": 1, "policy": 2, "status": None}, outbox=0,
                             clock="floor", lists="fresh", cpu_temp=51.2, overflow=0)
    doc.update(changes)
    return doc


def raw(doc: dict) -> bytes:
    return messages.encode(doc)


def test_built_messages_parse_back():
    assert messages.parse_scan(raw(scan()), K)["reason"] == "revoked"
    assert messages.parse_summary(raw(summary()), K)["count"] == 3
    assert messages.parse_heartbeat(raw(heartbeat()), K)["session"] == 4
    presence = messages.presence(kiosk=K, session=2, state="offline")
    assert messages.parse_presence(raw(presence), K)["state"] == "offline"


def test_a_heartbeat_says_the_roster_held_and_the_closing_optionally():
    doc = messages.heartbeat(kiosk=K, session=4, ts=1633420800.0, uptime=1.0, bundles={},
                             outbox=0, clock="floor", lists="fresh", cpu_temp=None,
                             roster={"organisation": "acme", "version": 12}, closed="acme")
    parsed = messages.parse_heartbeat(raw(doc), K)
    assert (parsed["roster"], parsed["closed"]) == ({"organisation": "acme", "version": 12},
                                                    "acme")
    # older firmware omits them; null is "none held" / "open"; "?" an unreadable closing
    assert "roster" not in heartbeat() and "closed" not in heartbeat()
    assert messages.parse_heartbeat(raw(heartbeat(roster=None, closed=None)), K)["roster"] is None
    assert messages.parse_heartbeat(raw(heartbeat(closed="?")), K)["closed"] == "?"


@pytest.mark.parametrize("changes, words", [
    ({"roster": "acme v12"}, "wrong type"),
    ({"roster": {"organisation": "acme"}}, "organisation, version"),
    ({"roster": {"organisation": "acme", "version": 1, "key": "x"}}, "organisation, version"),
    ({"roster": {"organisation": "acme", "version": -1}}, "out of range"),
    ({"roster": {"organisation": "acme", "version": True}}, "wrong type"),
    ({"roster": {"organisation": "acme", "version": 2 ** 60}}, "out of range"),
    ({"roster": {"organisation": "ac me", "version": 1}}, "organisation code"),
    ({"roster": {"organisation": "a" * 65, "version": 1}}, "too long"),
    ({"roster": {"organisation": "acme\u0007", "version": 1}}, "not printable"),
    ({"roster": {"organisation": 7, "version": 1}}, "wrong type"),
    ({"closed": 1}, "wrong type"),
    ({"closed": ""}, "organisation code"),
    ({"closed": "<script>"}, "organisation code"),
    ({"closed": "x" * 65}, "too long"),
    ({"closed": {"organisation": "acme"}}, "wrong type"),
])
def test_a_heartbeat_roster_or_closed_field_out_of_form_is_refused(changes, words):
    doc = heartbeat()
    doc.update(changes)
    with pytest.raises(MessageError, match=words):
        messages.parse_heartbeat(raw(doc), K)


def test_topics_name_the_kiosk_and_kind():
    assert messages.kiosk_of(messages.summary_topic(K)) == (K, "summary")
    assert messages.kiosk_of(messages.scan_topic(K)) == (K, "scan")
    for bad in ("gg/v1/kiosk/a b/scan", "gg/v2/kiosk/k/scan", "gg/v1/kiosk/k/scan/x", "x"):
        with pytest.raises(MessageError):
            messages.kiosk_of(bad)


@pytest.mark.parametrize("parse, doc, words", [
    (messages.parse_scan, scan(kiosk="other"), "published under"),
    (messages.parse_scan, scan(id="short"), "not a scan id"),
    (messages.parse_scan, scan(decision="amber"), "green or red"),
    (messages.parse_scan, scan(type="x"), "v, t or r"),
    (messages.parse_scan, scan(holder="Nguyen Van An"), "not hex"),
    (messages.parse_scan, scan(ts="yesterday"), "wrong type"),
    (messages.parse_scan, scan(v=2), "version"),
    (messages.parse_summary, summary(id="0123456789abcdef"), "summary id"),
    (messages.parse_summary, summary(hour=1633420801), "start of an hour"),
    (messages.parse_summary, summary(count=0), "at least 1"),
    (messages.parse_summary, summary(count=True), "wrong type"),
    (messages.parse_summary, summary(first=2e9), "after 'last'"),
    (messages.parse_heartbeat, heartbeat(clock="maybe"), "clock"),
    (messages.parse_heartbeat, heartbeat(bundles={"fonts": 1}), "bundles"),
    (messages.parse_heartbeat, heartbeat(session=None), "missing"),
])
def test_bad_fields_are_refused_with_a_sentence(parse, doc, words):
    with pytest.raises(MessageError, match=words):
        parse(raw(doc), K)


def test_oversized_and_non_json_are_refused():
    with pytest.raises(MessageError, match="limit"):
        messages.parse_scan(b"{" + b" " * messages.MAX_MESSAGE + b"}", K)
    for payload in (b"\xff\xfe", b"[1, 2]", b"not json", b""):
        with pytest.raises(MessageError):
            messages.parse_scan(payload, K)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300),
                 st.dictionaries(st.sampled_from(["v", "id", "kiosk", "ts", "decision", "reason",
                                                  "hour", "count", "first", "last", "session",
                                                  "state", "bundles", "clock", "lists",
                                                  "roster", "closed"]),
                                 st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                                           st.text(max_size=20),
                                           st.dictionaries(st.text(max_size=5), st.integers())))
                 .map(lambda d: json.dumps(d).encode())))
def test_any_payload_parses_or_is_a_message_error(payload):
    for parse in (messages.parse_scan, messages.parse_summary, messages.parse_heartbeat,
                  messages.parse_presence):
        try:
            parse(payload, K)
        except MessageError:
            pass
