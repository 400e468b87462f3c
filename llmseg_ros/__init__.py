"""ROS 2 layer of LLM-Seg: the lifecycle node (`llmseg_ros.node`), sensor_msgs <-> numpy conversion
(`llmseg_ros.conversions`), the inference worker (`llmseg_ros.worker`) and the `train` entry point.

All the method lives in `llmseg_model`; this package only converts messages and calls
`LLMSeg.prepare` / `LLMSeg.query`.
"""
