"""Reasoners: from an incident's events to ranked root causes and remediation proposals.

The deterministic reasoner is the default and the fallback; LLM reasoners sit beside it with the same
two methods, `diagnose` and `propose`.
"""

from ._catalog import ACTION_CATALOG, ACTION_TYPES, FAULT_TYPES
from ._history import (HISTORY_WINDOW, MIN_HISTORY, History, SignalKind, history_from_events, history_of,
                       kinds_by_incident, learn_history)
from ._fit import fit
from ._learned import BLEND_K, Example, LearnedModel, example_of
from .deterministic import DeterministicReasoner, described_note, unlisted, unlisted_note

__all__ = ["ACTION_CATALOG", "ACTION_TYPES", "BLEND_K", "FAULT_TYPES", "HISTORY_WINDOW", "MIN_HISTORY",
           "DeterministicReasoner", "Example", "History", "LearnedModel", "SignalKind", "described_note", "example_of",
           "fit", "history_from_events", "history_of", "kinds_by_incident", "learn_history", "unlisted",
           "unlisted_note"]
