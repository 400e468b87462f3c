"""What the measuring jobs (`llmseg_model.benchmark`, `llmseg_model.latency`) are built from:
statistics and platform facts (stats), timers of the model's stages (timing), random-weight models
of any shape (random_models), and the latency report's tables (latency_report). The jobs keep their
settings, their loops and their command lines."""
