import dagster as dg

from pipelines.partitions import batches

# The main job: every asset of a batch partition, in dependency order.
batch_job = dg.define_asset_job("batch_job", selection=dg.AssetSelection.groups("batch"), partitions_def=batches)
