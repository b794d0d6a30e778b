"""Prompt profiles: which bytes each prover model is sent, as versioned data files and a small loader."""

from services.prompts.feedback import FEEDBACK_RENDERERS
from services.prompts.loader import (
    BUILTIN_DIR,
    available_profiles,
    load_profile,
    profile_path,
    validate_profiles,
)
from services.prompts.profile import PromptProfile, PromptProfileError, render

__all__ = [
    "BUILTIN_DIR",
    "FEEDBACK_RENDERERS",
    "PromptProfile",
    "PromptProfileError",
    "available_profiles",
    "load_profile",
    "profile_path",
    "render",
    "validate_profiles",
]
