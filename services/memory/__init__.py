"""The retrieval memory: verified proofs in Qdrant, retrieved by Lean-aware lexical similarity.

Embedded: Qdrant Edge (Qdrant's engine in-process) at `settings.path`; or a Qdrant server at `settings.url`.

    memory = ProofMemory(settings.qdrant)          # embedded at settings.path unless settings.url
    memory.search(statement, top_k=4)              # -> list[RetrievedProof]: 4 theorems, never the target
    memory.add([VerifiedProof(...)])               # -> how many were new
    import_proofs(memory, Path("proofs.jsonl"))    # JSONL / Parquet / HF datasets folder, resumable
    export_proofs(memory, Path("out.jsonl"))

See docs/memory.md for the schema, the server settings and the benchmark.
"""

from services.memory.importer import ImportSummary, export_proofs, import_proofs
from services.memory.schema import VerifiedProof, body_hash, proof_hash, statement_hash
from services.memory.store import ProofMemory, format_stats, load_exclusions
from services.memory.tokenizer import statement_tokens, tokenize

__all__ = [
    "ImportSummary",
    "ProofMemory",
    "VerifiedProof",
    "body_hash",
    "export_proofs",
    "format_stats",
    "import_proofs",
    "load_exclusions",
    "proof_hash",
    "statement_hash",
    "statement_tokens",
    "tokenize",
]
