"""LLM-Seg40K-style data generation: LVIS / EgoObjects annotations + LLM-written reasoning questions.

Entry point: `python -m llmseg_model.datagen.generate --config config/datagen.yaml`.
"""

from llmseg_model.datagen.config import DatagenConfig

__all__ = ["DatagenConfig"]
