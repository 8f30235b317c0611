"""Tensor parallelism across processes and nodes: rank 0's engine schedules and samples, worker
ranks run the same forward on their slice of the model (see docs/design.md, "Tensor parallelism")."""
