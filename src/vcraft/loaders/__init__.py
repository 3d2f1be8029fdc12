"""Finding, reading and placing weights: checkpoints, the component table, devices, downloads."""
