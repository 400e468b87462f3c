"""Building the tiny preset: its tokenizer and LLaVA (llava), base weights (weights) and the
pretraining of its SAM and DINOv2 on procedural scenes (pretrain)."""
