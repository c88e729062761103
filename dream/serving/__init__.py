"""Serving DREAM and EAGLE-2-style drafts inside vLLM (a `vllm.general_plugins` plugin).

- `plugin.register()`: the entry point; registers the draft architecture and the target subclasses.
- `export`: turns a dream draft directory into a folder vLLM's speculative config can load.
- `draft_model`: the draft as a vLLM module (vLLM layers, paged KV cache, EAGLE hidden-state interface).
- `targets`: vLLM target models with the hidden-state interface and image token the EAGLE proposer needs.

Nothing here imports vLLM at package import time: `dream` works without it installed.
See docs/vllm.md for the design and how the streams map onto vLLM's EAGLE proposer.
"""
