"""medrek-kit: retrieval-based editing for medical LLMs with key-aware prompts (MedREK).

The public API lives here::

    from medrek import Editor, EditMemory, KnowledgeEncoder, PromptEncoder
"""

from .data import EditRecord, LocalityProbe, load_split
from .models.registry import load_causal_lm, load_encoder

__version__ = "0.1.0"

__all__ = [
    "EditRecord",
    "LocalityProbe",
    "load_causal_lm",
    "load_encoder",
    "load_split",
]
