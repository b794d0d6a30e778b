"""import_proofs / export_proofs on real files: the shared data, Parquet, HF folders, bad lines, a killed import."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from services.errors import MemoryError_
from services.memory import ProofMemory, export_proofs, import_proofs
from services.memory.handoff import import_through_owner
from services.memory.importer import _state_path
from services.memory.screening import screen
from services.settings import QdrantSettings
from tests.shared_data import shared_path

SAMPLE = shared_path("verified_proofs_sample.jsonl")
MINIF2F = shared_path("minif2f_valid.jsonl")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def memory(tmp_path: Path) -> ProofMemory:
    mem = ProofMemory(QdrantSettings(path=tmp_path / "qdrant"))
    yield mem
    mem.close()


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines()]


def test_both_shared_data_files_import_and_a_second_import_adds_nothing(memory: ProofMemory, records) -> None:
    first = import_proofs(memory, SAMPLE, progress=False)
    assert (first.read, first.added, first.duplicates, first.rejected) == (338, 338, 0, 0)
    # The checker's policy (called, not copied: it changes) refuses some published proofs; they are stored,
    # counted by rule, and flagged.
    refused = Counter(screen(r["formal_statement"], r["proof"], r["header"]) for r in records)
    refused.pop(None, None)
    assert refused, "the sample holds proofs today's policy refuses (`apply?` left in)"
    assert first.screened_out == refused
    assert memory.stats()["screened_out"] == dict(refused)
    assert f"screened out {sum(refused.values())}" in str(first)
    # minif2f_valid.jsonl holds statements only: every line is reported, none is stored, nothing fails.
    statements = import_proofs(memory, MINIF2F, progress=False)
    assert (statements.read, statements.added, statements.rejected) == (244, 0, 244)
    assert statements.reasons == {"no proof": 244}
    again = import_proofs(memory, SAMPLE, progress=False)
    assert (again.read, again.added, again.duplicates, again.rejected) == (338, 0, 338, 0)
    assert memory.count() == 338
    stored = {p.name: p for p in memory.iter_proofs()}
    one = stored["mathd_algebra_43"]
    assert one.model == "DeepSeek-Prover-V2-671B"
    assert one.source.startswith("github.com/deepseek-ai/DeepSeek-Prover-V2@")
    assert one.lean_version.startswith("DeepSeek-Prover-V1.5/V2 setup")


def test_malformed_lines_are_reported_and_skipped(memory: ProofMemory, tmp_path: Path, records: list[dict]) -> None:
    good = records[:3]
    lines = [
        json.dumps(good[0]),
        '{"formal_statement": "theorem broken : True := by", "proof": ',  # cut off
        json.dumps(["not", "an", "object"]),
        json.dumps({**good[1], "proof": ""}),
        json.dumps({"formal_statement": "def notATheorem : Nat := 1", "proof": "def notATheorem : Nat := 1"}),
        json.dumps({**good[1], "proof": good[1]["proof"] + "\n  sorry"}),
        json.dumps({**good[2], "verified": False}),
        "",
        json.dumps(good[1]),
        json.dumps({**good[2], "proof": good[2]["proof"] + "\n-- no sorry here, only a comment"}),
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    summary = import_proofs(memory, path, progress=False)
    assert summary.added == 3
    assert summary.rejected == 6
    assert set(summary.reasons) == {
        "invalid JSON",
        "not a JSON object",
        "no proof",
        "not a theorem statement",
        "proof contains sorry/admit",
        "marked not verified",
    }
    assert any(example.startswith("mixed.jsonl:2: invalid JSON") for example in summary.examples)
    text = str(summary)
    assert "rejected    6" in text and "mixed.jsonl:7: marked not verified: verified" in text
    assert memory.count() == 3


def test_parquet_with_other_column_names(memory: ProofMemory, tmp_path: Path, records: list[dict]) -> None:
    table = pa.table(
        {
            "statement": [r["formal_statement"] for r in records],
            "formal_proof": [r["proof"] for r in records],
            "prover": [r["prover"] for r in records],
            "unused_wide_column": ["x" * 1000 for _ in records],
        }
    )
    path = tmp_path / "proofs.parquet"
    pq.write_table(table, path, row_group_size=100)
    summary = import_proofs(memory, path, progress=False, batch_size=64)
    assert (summary.read, summary.added, summary.rejected) == (338, 338, 0)
    assert {p.model for p in memory.iter_proofs()} == {r["prover"] for r in records}


def test_explicit_field_mapping(memory: ProofMemory, tmp_path: Path, records: list[dict]) -> None:
    path = tmp_path / "odd.jsonl"
    path.write_text(
        "\n".join(json.dumps({"thm": r["formal_statement"], "lean": r["proof"]}) for r in records[:5]) + "\n"
    )
    assert import_proofs(memory, path, progress=False).reasons == {"no formal_statement": 5}
    summary = import_proofs(memory, path, progress=False, fields={"formal_statement": "thm", "proof": "lean"})
    assert summary.added == 5
    with pytest.raises(ValueError, match="unknown field"):
        import_proofs(memory, path, progress=False, fields={"statement_text": "thm"})


def _write_arrow_stream(path: Path, rows: list[dict]) -> None:
    table = pa.Table.from_pylist(rows)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=50):
            writer.write_batch(batch)


def test_hugging_face_folders(memory: ProofMemory, tmp_path: Path, records: list[dict]) -> None:
    rows = [{"formal_statement": r["formal_statement"], "proof": r["proof"], "header": r["header"]} for r in records]
    # 1. a hub snapshot: data/train-0000k-of-00003.parquet (the OProofs layout)
    hub = tmp_path / "hub"
    (hub / "data").mkdir(parents=True)
    for k in range(3):
        pq.write_table(pa.Table.from_pylist(rows[k::3]), hub / "data" / f"train-0000{k}-of-00003.parquet")
    (hub / "README.md").write_text("dataset card")
    summary = import_proofs(memory, hub, progress=False)
    assert (summary.files, summary.added) == (3, 338)
    # 2. DatasetDict.save_to_disk: dataset_dict.json + one folder per split with state.json and Arrow streams
    saved = tmp_path / "saved"
    for split, part in (("train", rows[:300]), ("test", rows[300:])):
        (saved / split).mkdir(parents=True)
        shards = [part[: len(part) // 2], part[len(part) // 2 :]]
        names = [f"data-0000{i}-of-00002.arrow" for i in range(2)]
        for name, shard in zip(names, shards, strict=True):
            _write_arrow_stream(saved / split / name, shard)
        (saved / split / "state.json").write_text(json.dumps({"_data_files": [{"filename": n} for n in names]}))
        (saved / split / "dataset_info.json").write_text("{}")
    (saved / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    again = import_proofs(memory, saved, progress=False)
    assert (again.files, again.read, again.added, again.duplicates) == (4, 338, 0, 338)


def test_export_then_import_round_trips(memory: ProofMemory, tmp_path: Path) -> None:
    import_proofs(memory, SAMPLE, progress=False)
    out = tmp_path / "out" / "memory.jsonl"
    assert export_proofs(memory, out) == 338
    with ProofMemory(QdrantSettings(path=tmp_path / "other")) as other:
        summary = import_proofs(other, out, progress=False)
        assert (summary.added, summary.rejected) == (338, 0)
        assert sorted(p.point_id for p in other.iter_proofs()) == sorted(p.point_id for p in memory.iter_proofs())
        assert {p.name: p for p in other.iter_proofs()} == {p.name: p for p in memory.iter_proofs()}


IMPORTER = """
import sys
from pathlib import Path
from services.memory import ProofMemory, import_proofs
from services.settings import QdrantSettings
memory = ProofMemory(QdrantSettings(path=Path(sys.argv[1])))
import_proofs(memory, Path(sys.argv[2]), batch_size=25, progress=False)
print("finished", flush=True)
"""


def test_a_killed_import_resumes_where_it_stopped(tmp_path: Path, records: list[dict]) -> None:
    # 1000 distinct proofs: the sample five times, each copy with its own statement name and proof comment.
    path = tmp_path / "grown.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        for copy in range(3):
            for r in records:
                statement = r["formal_statement"].replace(r["name"], f"{r['name']}_v{copy}", 1)
                handle.write(json.dumps({**r, "formal_statement": statement, "proof": r["proof"] + f"\n-- v{copy}"}))
                handle.write("\n")
    total = 3 * len(records)
    store = tmp_path / "qdrant"
    settings = QdrantSettings(path=store)
    with ProofMemory(settings) as probe:
        state_file = _state_path(probe, path, None)
    child = subprocess.Popen(
        [sys.executable, "-c", IMPORTER, str(store), str(path)], cwd=ROOT, stdout=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if state_file.exists():
                state = json.loads(state_file.read_text())
                if state.get("summary", {}).get("read", 0) >= 100:
                    break
            assert child.poll() is None, "the import finished before it could be interrupted"
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    interrupted = json.loads(state_file.read_text())
    assert not interrupted.get("done")
    done_before = interrupted["summary"]["read"]
    assert 100 <= done_before < total

    with ProofMemory(settings) as memory:
        stored_before = memory.count()
        assert stored_before >= done_before
        summary = import_proofs(memory, path, batch_size=25, progress=False)
        assert summary.resumed_at == done_before
        assert summary.read == total
        assert summary.added + summary.duplicates == total
        assert summary.rejected == 0
        assert memory.count() == total
        # Finished: the next run starts from the top and finds everything stored.
        again = import_proofs(memory, path, batch_size=200, progress=False)
        assert (again.resumed_at, again.added, again.duplicates) == (0, 0, total)


def test_progress_bar_shows_rate_and_eta(memory: ProofMemory, capsys: pytest.CaptureFixture[str]) -> None:
    import_proofs(memory, SAMPLE, progress=True, batch_size=100)
    err = capsys.readouterr().err
    assert "338/338" in err and "rec/s" in err and "added=338" in err


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "arrow"])
def test_every_reader_resumes_exactly_after_any_record(tmp_path: Path, records: list[dict], fmt: str) -> None:
    """The checkpoint cursor of each format: restarting after record k yields exactly records k+1..n."""
    from services.memory.importer import FIELD_ALIASES, _records

    rows = [{"formal_statement": r["formal_statement"], "proof": r["proof"]} for r in records[:57]]
    path = tmp_path / f"part.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=10)
    else:
        _write_arrow_stream(path, rows)
    full = list(_records(path, (0, 0), FIELD_ALIASES, 8))
    assert [item for _, _, item in full] == rows
    for k in (0, 7, 9, 10, 31, 55, 56):
        cursor = full[k][0]
        rest = list(_records(path, cursor, FIELD_ALIASES, 8))
        assert [item for _, _, item in rest] == rows[k + 1 :], f"after record {k}"
        assert [where for _, where, _ in rest] == [where for _, where, _ in full[k + 1 :]]


OWNER = """
import json, sys
from pathlib import Path
from services.memory import ProofMemory
from services.settings import QdrantSettings
memory = ProofMemory(QdrantSettings(path=Path(sys.argv[1])))
print(json.dumps("open"), flush=True)
for line in sys.stdin:  # one JSON request a line: "count", or a statement to search for
    request = json.loads(line)
    if request == "count":
        answer = memory.count()
    else:
        answer = [hit.formal_statement for hit in memory.search(request, top_k=1)]
    print(json.dumps(answer), flush=True)
memory.close()
"""


def test_an_import_while_another_process_owns_the_memory_is_handed_over(tmp_path: Path, records: list[dict]) -> None:
    """The owner (`oprover up`'s generate worker in service) keeps running and serving; the importing process
    stages the proofs and the owner takes them in, without a restart."""
    store = tmp_path / "qdrant"
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(store)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert owner.stdout is not None and owner.stdin is not None
        assert json.loads(owner.stdout.readline()) == "open"

        def ask(request: str) -> object:
            owner.stdin.write(json.dumps(request) + "\n")
            owner.stdin.flush()
            return json.loads(owner.stdout.readline())

        assert ask("count") == 0
        with pytest.raises(MemoryError_, match="open in another process"):
            ProofMemory(QdrantSettings(path=store))
        summary, receipt = import_through_owner(QdrantSettings(path=store), SAMPLE, progress=False, wait_s=60)
        assert (summary.read, summary.added) == (338, 338)
        assert receipt is not None
        assert (receipt.points, receipt.added, receipt.duplicates) == (338, 338, 0)
        assert receipt.flagged == sum(summary.screened_out.values())
        assert ask("count") == 338
        # the owner serves the imported proofs at once
        target = next(r for r in records if r["name"] == "mathd_algebra_43")["formal_statement"]
        assert ask(target.replace("mathd_algebra_43", "asked").replace("f 3 = 0", "f 3 = 1")) == [target]
        # importing again: staged again, and every point a duplicate for the owner
        _, again = import_through_owner(QdrantSettings(path=store), SAMPLE, progress=False, wait_s=60)
        assert again is not None and (again.added, again.duplicates) == (0, 338)
        assert not [p for p in (store / "inbox").iterdir() if p.name != "receipts"], "the inbox is left empty"
    finally:
        owner.communicate(timeout=60)  # closes its stdin: the owner closes the memory and exits
    assert owner.returncode == 0


HOLD_LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.readline()
"""


def test_a_handed_over_import_waits_for_the_next_owner(tmp_path: Path) -> None:
    """No owner takes it in within the wait: it stays in the inbox, and the next process to open the memory
    takes it in."""
    store = tmp_path / "qdrant"
    store.mkdir()
    # An owner that never looks at its inbox: a process holding the directory's lock and nothing else.
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(store / "owner.lock")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    try:
        assert holder.stdout.readline().strip() == "held"
        summary, receipt = import_through_owner(QdrantSettings(path=store), SAMPLE, progress=False, wait_s=1)
        assert receipt is None and summary.added == 338
    finally:
        holder.communicate("\n", timeout=30)
    with ProofMemory(QdrantSettings(path=store)) as memory:
        deadline = time.monotonic() + 60
        while memory.count() < 338 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert memory.count() == 338
