"""An ordinary OpenAI Batch API script, run against BatchRouter: only the client line differs.

    batchrouter serve --port 8000 &
    BATCHROUTER_API_KEY=br_... python examples/openai_batch.py ../shared/realfiles/zgimszhd61_batchinput.jsonl

It uploads the file, creates the batch with a 24h window, polls until it ends and prints the output
file's lines, then the error file's (as OpenAI's cookbook does). `BATCHROUTER_BASE_URL` says where the
server is (default http://127.0.0.1:8000/v1).
"""

from __future__ import annotations

import os
import sys
import time

from openai import OpenAI

# The three-line change: base_url and api_key point at BatchRouter instead of api.openai.com.
client = OpenAI(
    base_url=os.environ.get("BATCHROUTER_BASE_URL", "http://127.0.0.1:8000/v1"),
    api_key=os.environ["BATCHROUTER_API_KEY"],
)


def main(path: str) -> int:
    with open(path, "rb") as f:
        batch_input_file = client.files.create(file=f, purpose="batch")
    batch = client.batches.create(
        input_file_id=batch_input_file.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"description": f"nightly eval job: {os.path.basename(path)}"},
    )
    print(f"batch {batch.id}: {batch.status}", file=sys.stderr)
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        time.sleep(float(os.environ.get("POLL_S", "5")))
        batch = client.batches.retrieve(batch.id)
        print(f"batch {batch.id}: {batch.status} {batch.request_counts}", file=sys.stderr)
    if batch.output_file_id:
        sys.stdout.write(client.files.content(batch.output_file_id).text)
    if batch.error_file_id:
        sys.stdout.write(client.files.content(batch.error_file_id).text)
    return 0 if batch.status == "completed" else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
