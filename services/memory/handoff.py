"""Growing the embedded memory while its owner runs: an import staged beside it, then taken in by the owner.

One process owns an embedded directory (edge.py), and in `oprover up` that is the generate worker. So
`oprover memory import` does not wait for it to stop:

1. the importing process builds the import in a shard of its own, `inbox/staging-<key>/` (the usual
   import: parsing, screening, tokens and vectors, checkpoints, resumable under the same key);
2. it renames the finished shard to `inbox/ready-<key>-<time>/` (atomic: the owner never sees half of one);
3. the owner's `InboxWatcher` (a thread of every embedded `ProofMemory`) finds it within
   `HANDOFF_POLL_S`, copies its points in, pages of `SCROLL_PAGE` at a time (vectors as they are, no
   second screening; points present already are duplicates), writes `inbox/receipts/<name>.json` with the
   counts and deletes the shard;
4. the importer waits for the receipt and prints it.

The heavy part (reading, the policy screen, tokenizing) runs in the importing process; the owner only
copies ready points, a lock per page, so its searches go on meanwhile. A shard handed over while no owner
runs is taken in when the next owner opens the directory; a take-in cut short is redone from the start
(its points are then duplicates, never stored twice).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from services.errors import MemoryError_

if TYPE_CHECKING:
    from services.memory.importer import ImportSummary
    from services.memory.store import ProofMemory
    from services.settings import QdrantSettings

logger = logging.getLogger(__name__)

INBOX = "inbox"
RECEIPTS = "receipts"
HANDOFF_POLL_S = 1.0
TAKE_IN_PAGE = 512


def inbox_of(directory: Path) -> Path:
    return directory / INBOX


@dataclass
class Receipt:
    """What the owner did with one handed-over shard."""

    name: str
    points: int
    added: int
    duplicates: int
    flagged: int
    seconds: float

    def __str__(self) -> str:
        return (
            f"taken in by the running owner: {self.added} new, {self.duplicates} already stored"
            f" ({self.flagged} of the new screened out), {self.seconds:.1f} s"
        )


class InboxWatcher:
    """The owner's side: take in every `ready-*` shard of the inbox, at start and then every poll."""

    def __init__(self, memory: ProofMemory, directory: Path, poll_s: float = HANDOFF_POLL_S) -> None:
        self.memory = memory
        self.inbox = inbox_of(directory)
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-inbox", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=60)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for shard in self.ready():
                    if self._stop.is_set():
                        return
                    self.take_in(shard)
            except Exception:  # a bad shard must not end the watcher: logged, retried at the next poll
                logger.exception("memory: taking in a handed-over import failed; retrying in %.0f s", self.poll_s)
            self._stop.wait(self.poll_s)

    def ready(self) -> list[Path]:
        if not self.inbox.is_dir():
            return []
        return sorted(p for p in self.inbox.iterdir() if p.is_dir() and p.name.startswith("ready-"))

    def take_in(self, shard: Path) -> Receipt | None:
        from services.memory.edge import EdgeBackend

        started = time.monotonic()
        staged = EdgeBackend(shard, self.memory.collection, dense_size=lambda: None)
        points = added = flagged = 0
        try:
            offset = None
            while True:
                page, offset = staged.page(offset, TAKE_IN_PAGE, flagged_only=False, with_vectors=True)
                if self._stop.is_set():
                    return None  # the owner is closing: the shard stays and is taken in next time
                if page:
                    stored = self.memory.put(page)
                    points += len(page)
                    added += stored.added
                    flagged += sum(stored.flagged.values())
                if offset is None:
                    break
        finally:
            staged.close()
        receipt = Receipt(shard.name, points, added, points - added, flagged, time.monotonic() - started)
        shutil.rmtree(shard, ignore_errors=True)  # before the receipt: whoever reads it finds the inbox clean
        receipts = self.inbox / RECEIPTS
        receipts.mkdir(parents=True, exist_ok=True)
        tmp = receipts / f".{shard.name}.json"
        tmp.write_text(json.dumps(receipt.__dict__))
        os.replace(tmp, receipts / f"{shard.name}.json")
        logger.info("memory: took in %s: %s", shard.name, receipt)
        return receipt


def import_through_owner(
    settings: QdrantSettings, source: Path, *, progress: bool = True, wait_s: float = 3600.0, batch_size: int = 256
) -> tuple[ImportSummary, Receipt | None]:
    """The importing side: stage `source` beside the owned directory, hand it over, wait for the receipt.

    Returns the import's summary (what was staged) and the owner's receipt, or None when no owner took the
    shard in within `wait_s` (it stays in the inbox and is taken in when an owner next opens the directory).
    """
    from services.memory.importer import default_state_dir, import_proofs
    from services.memory.store import ProofMemory

    directory = Path(settings.path)
    inbox = inbox_of(directory)
    inbox.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(f"{directory.resolve()}|{settings.collection}|{source.resolve()}".encode()).hexdigest()[:16]
    staging = inbox / f"staging-{key}"
    staged = ProofMemory(settings.model_copy(update={"path": staging}), take_handoffs=False)
    try:
        summary = import_proofs(staged, source, progress=progress, batch_size=batch_size)
    finally:
        staged.close()
    name = f"ready-{key}-{time.time_ns()}"
    os.replace(staging, inbox / name)
    # The import's checkpoint has served its purpose: the next import of `source` stages it afresh.
    shutil.rmtree(default_state_dir(staged), ignore_errors=True)
    receipt_path = inbox / RECEIPTS / f"{name}.json"
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if receipt_path.exists():
            data = json.loads(receipt_path.read_text())
            receipt_path.unlink(missing_ok=True)
            return summary, Receipt(**data)
        time.sleep(0.2)
    return summary, None


def owned_elsewhere(settings: QdrantSettings) -> bool:
    """True when the embedded directory of `settings` is open in another process right now."""
    from services.memory.edge import DirectoryLock

    if settings.url is not None:
        return False
    try:
        return DirectoryLock.held(Path(settings.path))
    except OSError as exc:
        raise MemoryError_(f"cannot read the lock of {settings.path}: {exc}", transient=False) from exc
