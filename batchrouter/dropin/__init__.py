"""Drop-in provider Batch APIs: BatchRouter's batches described and driven the way a provider's SDK expects.

    openai.py        OpenAI's Batch API (`engine.openai`): create from an uploaded file, retrieve, list, cancel
    openai_lines.py  a finished batch's outputs as OpenAI's output and error file lines

    anthropic.py       Anthropic's Message Batches (`engine.anthropic`): create from requests, retrieve, list,
                       cancel, results, delete
    anthropic_lines.py Message Batch requests as BatchRouter's manifest, and results as Anthropic's JSONL
    answers.py         a finished batch's requests one row each, as every face's result lines read them

The OpenAI face's files are `engine.files` (`batchrouter.output.files`).
No rule of a batch's life lives here: each face maps the engine's state, quote and receipts onto a
provider's shapes, and calls `engine.batches` for everything else.
"""
