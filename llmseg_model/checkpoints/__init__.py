"""Reading checkpoints made elsewhere: DeepSpeed model states (deepspeed) and the released LLM-Seg
model converted into the paper preset's files (official)."""
