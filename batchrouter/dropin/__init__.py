"""Drop-in provider Batch APIs: BatchRouter's batches described and driven the way a provider's SDK expects.

    openai.py        OpenAI's Batch API (`engine.openai`): create from an uploaded file, retrieve, list, cancel
    openai_lines.py  a finished batch's outputs as OpenAI's output and error file lines

The files these read and write are `engine.files` (`batchrouter.output.files`). Anthropic's Message
Batches are to sit beside them (`anthropic.py`, results as Anthropic's JSONL) on the same batches.
No rule of a batch's life lives here: each face maps the engine's state, quote and receipts onto a
provider's shapes, and calls `engine.batches` for everything else.
"""
