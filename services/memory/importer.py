"""Fill the memory from files, and write it back out.

`import_proofs` reads, streaming and with bounded memory:

* JSONL (one object per line; `verified_proofs_sample.jsonl` and `export_proofs` output),
* Parquet files (read a batch of rows at a time, only the columns we use),
* a Hugging Face `datasets` folder: `save_to_disk` output (Arrow stream shards listed in `state.json`,
  one folder per split under `dataset_dict.json`) or a hub snapshot of Parquet/JSONL shards
  (`data/train-00000-of-00042.parquet`, ...).

Every `batch_size` records it upserts one batch and writes a checkpoint (file index + cursor) next to
the memory, so an interrupted import continues where it stopped: rerun the same command. Records are
keyed by (statement hash, proof hash), so anything replayed after a crash is counted as a duplicate,
never stored twice. A bad record (not JSON, no statement or proof, not a theorem, contains `sorry`,
marked unverified) is counted with its reason and skipped. A record the checker's policy refuses
(`native_decide`, `apply?`, an extra axiom; screening.py) is stored but flagged, never retrieved, and
counted under `screened out` with the rule; the policy runs in worker processes for a large import.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.errors import InvalidStatement
from services.leantext import blank_comments_and_strings, parse_statement
from services.memory.schema import VerifiedProof
from services.memory.screening import Screener
from services.memory.store import ProofMemory

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 256
MAX_EXAMPLES = 20  # rejected records quoted in the summary; the rest are only counted
MAX_EXAMPLES_PER_REASON = 3
MAX_STATEMENT_CHARS = 20_000
# Inputs larger than this are screened in worker processes (~4 KB a record: about 2,000 records); smaller
# ones in-process, where starting the workers would cost more than it saves.
PARALLEL_SCREEN_BYTES = 8 << 20

# Field names seen in public proof corpora, first match wins. `fields=` of import_proofs overrides.
FIELD_ALIASES: dict[str, tuple[str, ...]] = {
    "formal_statement": ("formal_statement", "statement", "lean4_statement", "theorem", "formal"),
    "proof": ("proof", "formal_proof", "full_proof", "lean4_proof", "lean_code", "code"),
    "header": ("header", "lean_header", "imports"),
    "source": ("source", "dataset", "origin"),
    "model": ("model", "prover", "generator"),
    "lean_version": ("lean_version", "lean_env", "lean_toolchain", "toolchain"),
    "job_id": ("job_id",),
    "created_at": ("created_at", "timestamp"),
    "name": ("name", "theorem_name", "problem_name", "id"),
}
VERIFIED_FLAGS = ("verified", "is_verified", "correct", "pass", "passed")

_FORBIDDEN = re.compile(r"(?<![\w.'])(sorry|admit)(?![\w'])")


@dataclass
class ImportSummary:
    """What one `import_proofs` call did (counts include earlier interrupted runs it resumed)."""

    path: str
    files: int = 0
    read: int = 0
    added: int = 0
    duplicates: int = 0
    rejected: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    screened_out: Counter[str] = field(default_factory=Counter)  # added but flagged, by policy rule
    examples: list[str] = field(default_factory=list)
    resumed_at: int = 0  # records already done by an earlier run when this one started
    elapsed_s: float = 0.0

    @property
    def rate(self) -> float:
        done = self.read - self.resumed_at
        return done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def reject(self, where: str, reason: str, detail: str = "") -> None:
        self.rejected += 1
        self.reasons[reason] += 1
        if len(self.examples) < MAX_EXAMPLES and self.reasons[reason] <= MAX_EXAMPLES_PER_REASON:
            self.examples.append(f"{where}: {reason}{': ' + detail if detail else ''}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "files": self.files,
            "read": self.read,
            "added": self.added,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "reasons": dict(self.reasons),
            "screened_out": dict(self.screened_out),
            "examples": list(self.examples),
            "resumed_at": self.resumed_at,
            "elapsed_s": round(self.elapsed_s, 3),
        }

    def __str__(self) -> str:
        lines = [
            f"imported {self.path} ({self.files} file{'s' if self.files != 1 else ''})",
            f"  read        {self.read}" + (f"  (resumed after {self.resumed_at})" if self.resumed_at else ""),
            f"  added       {self.added}",
            f"  duplicates  {self.duplicates}",
            f"  rejected    {self.rejected}",
        ]
        for reason, count in self.reasons.most_common():
            lines.append(f"    {count:>8}  {reason}")
        lines.append(
            f"  screened out {sum(self.screened_out.values())}  (stored, never retrieved: the checker's policy "
            "refuses them)"
        )
        for reason, count in self.screened_out.most_common():
            lines.append(f"    {count:>8}  {reason}")
        if self.examples:
            lines.append("  first rejected records:")
            lines += [f"    {example}" for example in self.examples]
        lines.append(f"  time        {self.elapsed_s:.1f} s ({self.rate:.0f} records/s)")
        return "\n".join(lines)


# --------------------------------------------------------------------------- input discovery


def _discover(path: Path) -> list[Path]:
    """The data files of `path`, in a stable order."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"no such file or folder: {path}")
    dict_file = path / "dataset_dict.json"
    if dict_file.is_file():  # DatasetDict.save_to_disk: one folder per split
        splits = json.loads(dict_file.read_text()).get("splits", [])
        return [f for split in splits for f in _discover(path / split)]
    state_file = path / "state.json"
    if state_file.is_file():  # Dataset.save_to_disk: Arrow stream shards in order
        data_files = json.loads(state_file.read_text()).get("_data_files", [])
        return [path / entry["filename"] for entry in data_files]
    files = [
        p
        for p in path.rglob("*")
        if p.is_file() and p.suffix in {".jsonl", ".parquet", ".arrow"} and not p.name.startswith(".")
    ]
    return sorted(files, key=lambda p: p.relative_to(path).as_posix())


def _fingerprint(files: list[Path]) -> list[list[Any]]:
    return [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files]


# --------------------------------------------------------------------------- readers
# Each yields (cursor after this record, where, record-or-error-text). A cursor is two integers
# meaning "resume here" in that format; (0, 0) is the start of the file.

Cursor = tuple[int, int]
Item = tuple[Cursor, str, "dict[str, Any] | tuple[str, str]"]  # a record, or (reason, detail) why not


def _read_jsonl(path: Path, start: Cursor) -> Iterator[Item]:
    offset, line_no = start
    with path.open("rb") as handle:
        handle.seek(offset)
        for raw in handle:
            offset += len(raw)
            line_no += 1
            where = f"{path.name}:{line_no}"
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as exc:
                yield (offset, line_no), where, ("invalid JSON", str(exc)[:120])
                continue
            yield (offset, line_no), where, record if isinstance(record, dict) else ("not a JSON object", "")


def _wanted_columns(names: list[str], fields: Mapping[str, tuple[str, ...]]) -> list[str]:
    wanted = {alias for aliases in fields.values() for alias in aliases} | set(VERIFIED_FLAGS)
    return [n for n in names if n in wanted]


def _read_parquet(path: Path, start: Cursor, fields: Mapping[str, tuple[str, ...]], batch_rows: int) -> Iterator[Item]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    columns = _wanted_columns(parquet.schema_arrow.names, fields)
    group, skip = start
    base = sum(parquet.metadata.row_group(g).num_rows for g in range(group))
    for g in range(group, parquet.num_row_groups):
        row = 0
        for batch in parquet.iter_batches(batch_size=batch_rows, row_groups=[g], columns=columns):
            for record in batch.to_pylist():
                row += 1
                if g == group and row <= skip:
                    continue
                yield (g, row), f"{path.name}:row {base + row}", record
        base += parquet.metadata.row_group(g).num_rows
        skip = 0


def _open_arrow(path: Path) -> Any:
    import pyarrow as pa

    source = pa.memory_map(str(path))
    try:
        return pa.ipc.open_stream(source)  # what `datasets` writes
    except pa.ArrowInvalid:
        return pa.ipc.open_file(source)


def _arrow_batches(reader: Any) -> Iterator[Any]:
    if hasattr(reader, "num_record_batches"):
        for i in range(reader.num_record_batches):
            yield reader.get_batch(i)
    else:
        yield from reader


def _read_arrow(path: Path, start: Cursor, fields: Mapping[str, tuple[str, ...]]) -> Iterator[Item]:
    reader = _open_arrow(path)
    columns = _wanted_columns(reader.schema.names, fields)
    first_batch, skip = start
    base = 0
    for b, batch in enumerate(_arrow_batches(reader)):
        if b < first_batch:  # memory-mapped: skipping a batch reads only its header
            base += batch.num_rows
            continue
        for row, record in enumerate(batch.select(columns).to_pylist(), 1):
            if b == first_batch and row <= skip:
                continue
            yield (b, row), f"{path.name}:row {base + row}", record
        base += batch.num_rows


def _count_records(path: Path) -> int:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    if path.suffix == ".arrow":
        return sum(batch.num_rows for batch in _arrow_batches(_open_arrow(path)))
    lines = 0
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            lines += chunk.count(b"\n")
    return lines


def _records(path: Path, start: Cursor, fields: Mapping[str, tuple[str, ...]], batch_rows: int) -> Iterator[Item]:
    if path.suffix == ".parquet":
        return _read_parquet(path, start, fields, batch_rows)
    if path.suffix == ".arrow":
        return _read_arrow(path, start, fields)
    return _read_jsonl(path, start)


# --------------------------------------------------------------------------- records


def _pick(record: Mapping[str, Any], aliases: tuple[str, ...]) -> Any:
    for alias in aliases:
        value = record.get(alias)
        if value is not None and value != "":
            return value
    return None


def to_verified_proof(
    record: Mapping[str, Any], fields: Mapping[str, tuple[str, ...]], default_source: str
) -> VerifiedProof | tuple[str, str]:
    """The record as a `VerifiedProof`, or (reason, detail) why it cannot be one."""
    for flag in VERIFIED_FLAGS:
        if record.get(flag) is False:
            return "marked not verified", flag
    statement = _pick(record, fields["formal_statement"])
    proof = _pick(record, fields["proof"])
    if not isinstance(statement, str) or not statement.strip():
        return "no formal_statement", ""
    if not isinstance(proof, str) or not proof.strip():
        return "no proof", ""
    if len(statement) > MAX_STATEMENT_CHARS:
        return "statement too long", f"{len(statement)} chars"
    try:
        parse_statement(statement)
    except InvalidStatement as exc:
        return "not a theorem statement", exc.message[:120]
    # Blanking comments is slow in Python: only pay for it when the word is there at all.
    if _FORBIDDEN.search(proof) and _FORBIDDEN.search(blank_comments_and_strings(proof)):
        return "proof contains sorry/admit", ""
    created = _pick(record, fields["created_at"])
    try:
        created_at = float(created) if created is not None else time.time()
    except (TypeError, ValueError):
        created_at = time.time()

    def text(key: str) -> str | None:
        value = _pick(record, fields[key])
        return None if value is None else str(value)

    return VerifiedProof(
        formal_statement=statement,
        proof=proof,
        header=text("header") or "",
        source=text("source") or default_source,
        model=text("model"),
        lean_version=text("lean_version"),
        job_id=text("job_id"),
        created_at=created_at,
        name=text("name"),
    )


# --------------------------------------------------------------------------- checkpoints


def default_state_dir(memory: ProofMemory) -> Path:
    path = Path(memory.settings.path)
    return path.parent / (path.name + ".imports")


def _state_path(memory: ProofMemory, source: Path, state_dir: Path | None) -> Path:
    where = memory.settings.url or str(Path(memory.settings.path).resolve())
    key = hashlib.sha256(f"{where}|{memory.collection}|{source.resolve()}".encode()).hexdigest()[:20]
    return (state_dir or default_state_dir(memory)) / f"{key}.json"


def _save_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)  # atomic: a crash leaves the old checkpoint or the new, never half of one


# --------------------------------------------------------------------------- import / export


def import_proofs(
    memory: ProofMemory,
    path: Path,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
    resume: bool = True,
    fields: Mapping[str, str | tuple[str, ...]] | None = None,
    state_dir: Path | None = None,
) -> ImportSummary:
    """Import verified proofs from `path` (file or folder) into `memory`; see the module docstring.

    `fields` maps our field names (`formal_statement`, `proof`, `header`, ...) to the corpus's own when
    the built-in aliases do not cover them. With `resume=False` an earlier checkpoint is ignored.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    path = Path(path)
    aliases = dict(FIELD_ALIASES)
    for key, value in (fields or {}).items():
        if key not in aliases:
            raise ValueError(f"unknown field {key!r}; known: {', '.join(aliases)}")
        aliases[key] = (value,) if isinstance(value, str) else tuple(value)
    files = _discover(path)
    summary = ImportSummary(path=str(path), files=len(files))
    started = time.monotonic()
    fingerprint = _fingerprint(files)
    state_file = _state_path(memory, path, state_dir)
    state: dict[str, Any] = {"fingerprint": fingerprint, "file": 0, "cursor": [0, 0]}
    if resume and state_file.is_file():
        try:
            saved = json.loads(state_file.read_text())
        except ValueError:
            saved = {}
        if saved.get("fingerprint") == fingerprint and not saved.get("done"):
            state = saved
            counts = saved.get("summary", {})
            for key in ("read", "added", "duplicates", "rejected"):
                setattr(summary, key, int(counts.get(key, 0)))
            summary.reasons.update(counts.get("reasons", {}))
            summary.screened_out.update(counts.get("screened_out", {}))
            summary.examples = list(counts.get("examples", []))
            summary.resumed_at = summary.read
            logger.info("memory import: resuming %s after %d records", path, summary.read)
        elif saved.get("fingerprint") != fingerprint and saved:
            logger.info("memory import: %s changed since the last checkpoint; starting over", path)

    bar = None
    if progress:
        from tqdm import tqdm

        total = sum(_count_records(f) for f in files)
        bar = tqdm(
            total=total,
            initial=min(summary.read, total),
            unit="rec",
            unit_scale=True,
            desc=f"import {path.name}",
            dynamic_ncols=True,
            smoothing=0.1,
        )

    batch: list[VerifiedProof] = []
    parallel = sum(f.stat().st_size for f in files) > PARALLEL_SCREEN_BYTES
    screener = Screener(processes=None if parallel else 1)

    def flush(file_index: int, cursor: Cursor) -> None:
        if batch:
            stored = memory.store(batch, screener=screener)
            summary.added += stored.added
            summary.duplicates += len(batch) - stored.added
            summary.screened_out.update(stored.flagged)
            batch.clear()
        state.update(file=file_index, cursor=list(cursor), summary=summary.to_dict())
        _save_state(state_file, state)
        if bar is not None:
            bar.set_postfix(added=summary.added, dup=summary.duplicates, rejected=summary.rejected, refresh=False)

    try:
        pending = 0
        for file_index in range(int(state["file"]), len(files)):
            source = files[file_index]
            default_source = f"import:{source.name}"
            start: Cursor = tuple(state["cursor"]) if file_index == state["file"] else (0, 0)  # type: ignore[assignment]
            for cursor, where, item in _records(source, start, aliases, batch_size):
                summary.read += 1
                pending += 1
                if isinstance(item, tuple):
                    summary.reject(where, *item)
                else:
                    result = to_verified_proof(item, aliases, default_source)
                    if isinstance(result, VerifiedProof):
                        batch.append(result)
                    else:
                        summary.reject(where, *result)
                if pending >= batch_size:
                    flush(file_index, cursor)
                    if bar is not None:
                        bar.update(pending)
                    pending = 0
            flush(file_index + 1, (0, 0))  # end of file: a later run starts at the next one
            if bar is not None:
                bar.update(pending)
            pending = 0
    finally:
        screener.close()
        if bar is not None:
            bar.close()
    summary.elapsed_s = time.monotonic() - started
    state.update(done=True, summary=summary.to_dict())
    _save_state(state_file, state)
    logger.info(
        "memory import %s: read=%d added=%d duplicates=%d rejected=%d",
        path,
        summary.read,
        summary.added,
        summary.duplicates,
        summary.rejected,
    )
    return summary


def export_proofs(memory: ProofMemory, path: Path) -> int:
    """Write every stored proof to `path` as JSONL (the format `import_proofs` reads); return the count.

    Written to a temporary file and renamed, so a reader never sees half an export.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    count = 0
    with tmp.open("w", encoding="utf-8") as handle:
        for proof in memory.iter_proofs():
            handle.write(json.dumps(proof.to_record(), ensure_ascii=False) + "\n")
            count += 1
    os.replace(tmp, path)
    return count
