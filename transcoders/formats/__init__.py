"""Readers for published transcoder formats, one module per publisher (see ``transcoders.io``).

- ``circuit_tracer``: circuit-tracer's ``config.yaml`` sets (PLT and CLT), also what we save;
- ``gemma_scope``: GemmaScope ``params.npz`` and GemmaScope-2 files, listed by a circuit-tracer config;
- ``sparsify``: EleutherAI sparsify's hookpoint folders (PLT, and CLTs from its clt-training fork);
- ``mapped``: memory-mapped safetensors files; ``layers``: per-layer files into stacked tensors;
  ``common``: the error, the target device/dtype and the block-wise copy the readers share.

Each returns a ``common.LoadedSet`` in our layout; ``transcoders.io.load_transcoder_dir`` builds the
``Transcoder`` around it.
"""
