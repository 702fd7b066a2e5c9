"""The shared core: what every modality and task kind stands on. Config building blocks and
shared sections, registries, data rows and splits, the trainer, batched inference and its
metrics, what trains (parameter groups), the run folder, and progress on long work."""
