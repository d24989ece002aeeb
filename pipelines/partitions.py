import dagster as dg

# One partition per batch; keys are batch ids (see batchrouter.batch.batch_id_for).
batches = dg.DynamicPartitionsDefinition(name="batches")
