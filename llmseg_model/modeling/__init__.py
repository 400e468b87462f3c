"""The LLM-Seg method, one concept a file: proposals (SAM), features (DINOv2 pooling), vlm (LLaVA
with `<SEG>`), fusion (transformer and heads), selection (threshold rule), losses, and model
(`LLMSeg`, which ties them together)."""
