"""Thin Dagster assets over the engine; each calls one stage of batchrouter.batch."""
