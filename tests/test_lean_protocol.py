"""The repl protocol: every real transcript parses; the stand-in speaks it byte for byte; framing traps."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from services.lean.protocol import Pos, ProtocolError, decode_reply, encode_command, parse_reply, split_replies
from standins.fake_repl import lean_cmd, render_json, write_table
from tests.shared_data import shared_path

TRANSCRIPTS = shared_path("repl_transcripts")
INDEX = json.loads((TRANSCRIPTS / "index.json").read_text(encoding="utf-8"))
REPL_PAIRS = [
    (s["set"].split("@ ")[-1] + "/" + p["name"], p)
    for s in INDEX["sets"]
    if "kimina" not in s["set"]
    for p in s["pairs"]
]
KIMINA_PAIRS = [p for s in INDEX["sets"] if "kimina" in s["set"] for p in s["pairs"]]


def test_index_has_every_version() -> None:
    versions = {name.split("/")[0] for name, _ in REPL_PAIRS}
    assert versions == {"v4.9.0", "v4.15.0", "v4.24.0", "v4.33.0-rc2"}
    assert len(REPL_PAIRS) == INDEX["total_repl_pairs"] == 244
    assert len(KIMINA_PAIRS) == INDEX["total_kimina_pairs"] == 102


@pytest.mark.parametrize(("name", "pair"), REPL_PAIRS, ids=[n for n, _ in REPL_PAIRS])
def test_every_expected_output_parses_into_typed_messages(name, pair) -> None:
    text = (TRANSCRIPTS / pair["expected"]).read_text(encoding="utf-8")
    chunks = split_replies(text)
    assert chunks, name
    for chunk in chunks:
        reply = decode_reply(chunk)
        raw = json.loads(chunk)
        assert len(reply.messages) == len(raw.get("messages", []))
        assert len(reply.sorries) == len(raw.get("sorries", []))
        if "message" in raw:
            assert reply.error == raw["message"]
        else:
            assert reply.error is None
            assert reply.env == raw.get("env")
        for message, original in zip(reply.messages, raw.get("messages", []), strict=True):
            assert message.severity in {"error", "warning", "info"}
            assert message.data == original["data"]
            assert message.pos is not None and message.pos.line >= 0
            if original.get("endPos") is None:
                assert message.end_pos is None


@pytest.mark.parametrize(("name", "pair"), REPL_PAIRS, ids=[n for n, _ in REPL_PAIRS])
def test_stand_in_renders_replies_byte_for_byte_like_lean(name, pair) -> None:
    text = (TRANSCRIPTS / pair["expected"]).read_text(encoding="utf-8")
    rendered = "".join(render_json(json.loads(chunk)) + "\n\n" for chunk in split_replies(text))
    assert rendered == text


def test_kimina_responses_parse() -> None:
    outcomes = {"ok": 0, "timeout": 0}
    for pair in KIMINA_PAIRS:
        result = json.loads((TRANSCRIPTS / pair["expected"]).read_text(encoding="utf-8"))["results"][0]
        reply = parse_reply(result["response"] or {})
        if result["error"]:
            outcomes["timeout"] += 1
            assert "timed out" in result["error"]
        else:
            outcomes["ok"] += 1
            assert not [m for m in reply.messages if m.is_error]
            assert len(reply.messages) == pair["n_messages"]
    assert outcomes == {"ok": 98, "timeout": 4}


def test_lenient_shapes() -> None:
    reply = parse_reply({"sorries": [{"goal": "⊢ True", "proofState": 0}], "env": 3})
    assert reply.sorries[0].pos is None and reply.messages == ()
    reply = parse_reply({"messages": [{"severity": "error", "pos": {"line": 1, "column": 2}, "data": "x"}]})
    assert reply.messages[0].end_pos is None and reply.env is None
    assert parse_reply({"message": "Unknown environment."}).error == "Unknown environment."
    with pytest.raises(ProtocolError):
        decode_reply("not json")
    with pytest.raises(ProtocolError):
        decode_reply("[1, 2]")
    with pytest.raises(ProtocolError):
        parse_reply({"messages": [{"severity": "error", "pos": "here", "data": "x"}], "env": 0})


def test_request_framing_is_one_line_then_one_blank_line() -> None:
    data = encode_command("theorem t : 1 = 1 := by\n  rfl", 0)
    assert data.endswith(b"}\n\n") and data.count(b"\n") == 2
    assert json.loads(data) == {"cmd": "theorem t : 1 = 1 := by\n  rfl", "env": 0}


def _run(table: Path, stdin: str) -> subprocess.CompletedProcess[str]:
    import shlex

    return subprocess.run(shlex.split(lean_cmd(table)), input=stdin, capture_output=True, text=True, timeout=30)


def test_stand_in_process_follows_the_repl_loop(tmp_path) -> None:
    table = write_table(tmp_path / "t.json", [{"match": "rfl", "outcome": "pass"}], default="error")
    requests = [
        encode_command("import Mathlib").decode(),
        "# a comment request gets no reply\n\n",
        encode_command("theorem t : 1 = 1 := by\n  rfl", 0).decode(),
        encode_command("#print axioms t", 1).decode(),
        encode_command("theorem u : 1 = 1 := by simp", 7).decode(),
    ]
    done = _run(table, "".join(requests))
    assert done.returncode == 0  # EOF ends it cleanly
    replies = [decode_reply(chunk) for chunk in split_replies(done.stdout)]
    assert [r.env for r in replies] == [0, 1, 2, None]
    assert replies[2].messages[0].data == "'t' depends on axioms: [propext, Classical.choice, Quot.sound]"
    assert replies[3].error == "Unknown environment."
    assert "NOT Lean" in done.stderr  # the stand-in says what it is


def test_raw_newline_in_a_request_is_lost_and_malformed_json_kills_the_process(tmp_path) -> None:
    table = write_table(tmp_path / "t.json", [{"match": "bysorry", "outcome": "error", "message": "unknown"}])
    done = _run(table, '{"cmd": "theorem foo : 1 = 1 := by\nsorry"}\n\n{"cmd": \n\n')
    first = decode_reply(split_replies(done.stdout)[0])
    assert first.messages[0].data == "unknown"  # the lines were joined: `bysorry`, as the real repl does
    assert done.returncode == 1 and "Could not parse JSON" in done.stderr


def test_stand_in_check_answers_in_the_real_layout(tmp_path) -> None:
    """`#check` as in the real transcript (repl v4.15.0 test/dup_msg): one info message at the `#check` token."""
    expected = shared_path("repl_transcripts/repl/v4.15.0/test/dup_msg.expected.out").read_text()
    table = write_table(tmp_path / "t.json", [{"always": True, "outcome": "pass"}])
    requests = [
        encode_command("def f : Nat := 2").decode(),
        encode_command("#check f", 0).decode(),
        encode_command("#check g", 1).decode(),
        encode_command("theorem\n  f : True := trivial", 0).decode(),
        encode_command("set_option pp.all true in\n#check @_root_.«f»", 0).decode(),
    ]
    done = _run(table, "".join(requests))
    replies = split_replies(done.stdout)
    assert replies[1] == split_replies(expected)[1]  # byte for byte: `f : Nat` at 1:0-1:6
    assert decode_reply(replies[2]).messages[0].data == "unknown identifier 'g'"
    assert decode_reply(replies[3]).messages[0].data == "'f' has already been declared"  # any layout, as Lean
    answer = decode_reply(replies[4]).messages[0]
    assert (answer.severity, answer.data, answer.pos) == ("info", "f : Nat", Pos(2, 0))
