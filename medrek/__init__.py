"""medrek-kit: retrieval-based editing for medical LLMs with key-aware prompts (MedREK).

The public API::

    from medrek import Editor, EditMemory, KnowledgeEncoder, PromptEncoder
    editor = Editor.build(EditorConfig(method="medrek", lm="smollm2-135m", encoder="minilm-l6"))
    editor.edit({"prompt": "...", "target_new": "..."})
"""

from .data import EditRecord, LocalityProbe, load_split
from .editor import EditedModel, EditNotRetrievedWarning, Editor, EditorConfig
from .io import CheckpointError
from .memory import EditMemory, MemoryConfig
from .methods import PRESETS, MethodPreset, get_preset
from .models.encoder import KnowledgeEncoder, KnowledgeEncoderConfig
from .models.prompt import PromptEncoder, PromptEncoderConfig
from .models.registry import load_causal_lm, load_encoder

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "EditMemory",
    "EditNotRetrievedWarning",
    "EditRecord",
    "EditedModel",
    "Editor",
    "EditorConfig",
    "KnowledgeEncoder",
    "KnowledgeEncoderConfig",
    "LocalityProbe",
    "MemoryConfig",
    "MethodPreset",
    "PRESETS",
    "PromptEncoder",
    "PromptEncoderConfig",
    "get_preset",
    "load_causal_lm",
    "load_encoder",
    "load_split",
]
