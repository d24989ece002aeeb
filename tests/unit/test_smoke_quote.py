from batchrouter.core.catalog import Catalog
from batchrouter.core.config import LimitsConfig, RoutePolicy
from batchrouter.intake.manifest import read_manifest
from batchrouter.pricing.quote import build_quote


def test_openai_reference_prompt_is_13_tokens_and_priced_exactly(catalog: Catalog, limits: LimitsConfig) -> None:
    # OpenAI's API reference shows prompt_tokens=13 for this single user message on gpt-4o-family models.
    data = b"item_id,model,prompt,max_tokens\n1,gpt-4o-mini,Say this is a test!,100\n"
    manifest = read_manifest("m.csv", data, catalog=catalog, limits=limits)
    quote = build_quote(manifest, workspace="w", catalog=catalog, policy=RoutePolicy(), workers=1)
    row = quote.accepted.row(0, named=True)
    assert row["input_tokens"] == 13
    # 13 x 0.15 + 100 x 0.60 = 61.95 micro-dollars, rounded up.
    assert row["reserve_usd_micros"] == 62
