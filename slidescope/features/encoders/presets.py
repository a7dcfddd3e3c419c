"""Importing this module registers every built-in encoder (one module per model family)."""

from __future__ import annotations

from . import clip, conch, conch_v1, he_descriptor, phikon, timm_models  # noqa: F401
