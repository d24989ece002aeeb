"""The code location `dagster dev -w workspace.yaml` loads."""

import dagster as dg

from assets import batch as batch_assets
from pipelines.jobs import batch_job
from pipelines.resources import BatchRouterResource

defs = dg.Definitions(
    assets=dg.load_assets_from_modules([batch_assets]),
    jobs=[batch_job],
    resources={"batchrouter": BatchRouterResource()},
)
