"""What the measuring jobs (`llmseg_model.benchmark`, `llmseg_model.latency`) are built from:
statistics and platform facts (stats), the benchmark's ground-truth and random baselines
(baselines) and its report (benchmark_report), timers of the model's stages (timing), random-weight
models of any shape (random_models), and the latency report (latency_report). The jobs keep their
settings, their loops and their command lines."""
