import dagster as dg

# The main job: every asset of a batch partition, in dependency order (partitioned like its assets).
batch_job = dg.define_asset_job("batch_job", selection=dg.AssetSelection.groups("batch"))
