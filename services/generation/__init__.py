"""Generation: the OpenAI-compatible client that talks to SGLang, and the extraction of Lean code."""

from services.generation.client import (
    AsyncGenerationClient,
    Completion,
    GenerationCancelled,
    GenerationClient,
    parse_retry_after,
)
from services.generation.extract import Extraction, extract_code

__all__ = [
    "AsyncGenerationClient",
    "Completion",
    "Extraction",
    "GenerationCancelled",
    "GenerationClient",
    "extract_code",
    "parse_retry_after",
]
