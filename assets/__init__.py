"""Thin Dagster assets over the engine (batchrouter.engine.BatchRouter); metadata helpers in `metadata`."""
