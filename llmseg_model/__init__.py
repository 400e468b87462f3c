"""LLM-Seg: reasoning segmentation with SAM proposals, DINOv2 mask embeddings and LLaVA + <SEG>.

This package never imports ROS. Main entry: `llmseg_model.modeling.model.LLMSeg`.
"""

__version__ = "0.1.0"
