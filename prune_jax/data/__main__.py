"""``python -m prune_jax.data fetch|stats``: the same command as ``prune-jax data``.

Kept because it needs no console script on PATH (a bare ``python`` with the package
installed is enough, e.g. in the manual-download instructions of `fetch_wiki_sample`).
"""

from prune_jax.cli import data_app
from skmm_jax.common.cli import run_app

if __name__ == "__main__":
    run_app(data_app)
