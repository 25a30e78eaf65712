"""Text corpora for calibration and perplexity evaluation.

Pipeline, one module per step: *load* text (``corpora.py``: `load_documents` of the
Wikipedia sample, a .txt/.jsonl/.parquet file, a MediaWiki dump or a hub dataset;
``wiki.py`` fetches the sample and parses dumps, ``markup.py`` strips their markup)
→ *split* it by document into a calibration part and an evaluation part
(``splits.py``) → *tokenise* each part into one flat, cached token stream
(``tokens.py``) → cut the stream into ``[num_samples, seq_len]`` calibration batches
(random windows) or ``[W, seq_len]`` evaluation windows (consecutive windows)
(``windows.py``). `Document` (``documents.py``) is what flows between the steps;
``cache.py`` says where downloads and token streams are kept.

Command line (the project's setup step runs the first)::

    prune-jax data fetch [--cache-dir DIR] [--wheel PATH]
    prune-jax data stats [SOURCE]

``python -m prune_jax.cli data fetch|stats`` is the same command.
"""

from prune_jax.data.cache import default_cache_dir
from prune_jax.data.corpora import TXT_CHUNK_CHARS, WIKI_SAMPLE_SOURCE, load_documents, paragraph_chunks
from prune_jax.data.documents import Document
from prune_jax.data.markup import strip_wiki_markup
from prune_jax.data.splits import split_documents
from prune_jax.data.tokens import DOCUMENT_SEPARATOR, tokenize_corpus
from prune_jax.data.wiki import WIKI_SAMPLE_GENSIM_VERSION, fetch_wiki_sample, wiki_documents
from prune_jax.data.windows import calibration_batches, eval_windows

__all__ = [
    "DOCUMENT_SEPARATOR",
    "TXT_CHUNK_CHARS",
    "WIKI_SAMPLE_GENSIM_VERSION",
    "WIKI_SAMPLE_SOURCE",
    "Document",
    "calibration_batches",
    "default_cache_dir",
    "eval_windows",
    "fetch_wiki_sample",
    "load_documents",
    "paragraph_chunks",
    "split_documents",
    "strip_wiki_markup",
    "tokenize_corpus",
    "wiki_documents",
]
