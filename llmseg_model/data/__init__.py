"""Data sets: ReasonSeg and LLM-Seg40K readers, the procedural set, and the proposal cache."""
