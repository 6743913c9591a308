"""The providers' simulator: an OpenAI-compatible LLM and an Evolution gateway on loopback.

`server` serves both (`Simulator`); `faults` says what goes wrong and how often; `texts`
writes the canned answers; `cache_batches` models the prompt cache and the batch API;
`answers` holds the HTTP answers they share.
"""

from .cache_batches import BatchStore, PromptCacheModel
from .faults import FAULT_PROFILES, AIFaultKind, Faults, SendFaultKind, fault_profile
from .server import (
    BATCH_PRICE_FACTOR,
    CACHED_PRICE_FACTOR,
    NO_STRUCTURED_OUTPUT_MARK,
    AIRequest,
    SentMessage,
    Simulator,
)

__all__ = [
    "BATCH_PRICE_FACTOR",
    "CACHED_PRICE_FACTOR",
    "FAULT_PROFILES",
    "NO_STRUCTURED_OUTPUT_MARK",
    "AIFaultKind",
    "AIRequest",
    "BatchStore",
    "Faults",
    "PromptCacheModel",
    "SendFaultKind",
    "SentMessage",
    "Simulator",
    "fault_profile",
]
