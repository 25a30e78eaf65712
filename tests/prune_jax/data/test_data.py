"""Corpora: markup stripping, dump parsing, loaders, splits, token caching, windows."""

import bz2
import json
import runpy
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from prune_jax.cli import app
from prune_jax.data import (
    Document,
    cache,
    calibration_batches,
    eval_windows,
    fetch_wiki_sample,
    load_documents,
    paragraph_chunks,
    split_documents,
    strip_wiki_markup,
    tokenize_corpus,
    wiki,
    wiki_documents,
)
from prune_jax.data import tokens as token_stream

# ------------------------------------------------------------------ strip_wiki_markup


@pytest.mark.parametrize(
    ("wikitext", "expected"),
    [
        # nested templates, including one spanning lines and one inside a parameter
        ("A {{outer|x={{inner|{{deep}}}}|z}} B", "A B"),
        ("{{Infobox\n| name = {{lang|fr|X}}\n| pop = 5\n}}\nText.", "Text."),
        # links: label, plain, suffix, pipe trick, visible category link
        ("[[Target page|the label]] and [[plain]]s", "the label and plains"),
        ("[[Paris (France)|]] via [[:Category:Cities|cities]]", "Paris (France) via cities"),
        # refs with nested templates, self-closing refs, other tags keep their content
        ('Fact.<ref name="a">Cite {{cite web|url=x}}</ref> Next<ref name="a"/>.', "Fact. Next."),
        ("H<sub>2</sub>O<br/>line <math>x^2</math>done", "H2Oline done"),
        # tables, nested, with templates inside
        ("Before\n{| class=wikitable\n|-\n| a || {{flag|b}}\n|\n{|\n| nested\n|}\n|}\nAfter", "Before\n\nAfter"),
        # headings of every level, bold/italic
        ("== History ==\nText\n=== Early years ===\nMore", "History\nText\nEarly years\nMore"),
        ("'''Bold''' and ''italic'' and '''''both'''''", "Bold and italic and both"),
        # categories, files whose captions hold links and lone brackets, interlanguage
        ("Text.\n[[Category:Foo|key]]\n[[File:x.jpg|thumb|A [[cat]] on [[mat|a mat]] [sic] too]]\n[[de:Foo]]", "Text."),
        ("See [[Image:y.png|left|200px|Bicyclo[1.1.0]butane]]here", "See here"),
        # external links with and without a label; bare URLs stay
        ("[http://x.org Label here] and [https://y.org] or http://z.org", "Label here and or http://z.org"),
        # comments, entities, list markers, behaviour switches, blank-line collapse
        ("a<!-- hidden {{x}} -->b __NOTOC__", "ab"),
        ("5&nbsp;km &ndash; far &lt;tag&gt;", "5 km – far <tag>"),
        ("* one\n** two\n# three\n: indented", "one\ntwo\nthree\nindented"),
        ("a\n\n\n\n  b  \n----\n\nc", "a\n\nb\n\nc"),
        # not markup / unbalanced markup is kept rather than eating the article
        ("x < y and y > z", "x < y and y > z"),
        ("a {{broken and the rest", "a {{broken and the rest"),
    ],
)
def test_strip_wiki_markup(wikitext: str, expected: str):
    assert strip_wiki_markup(wikitext) == expected


# ------------------------------------------------------------------ MediaWiki dumps

_DUMP_PAGE = """  <page>
    <title>{title}</title>
    <ns>{ns}</ns>
    <id>{id}</id>{redirect}
    <revision>
      <id>9{id}</id>
      <text xml:space="preserve">{text}</text>
    </revision>
  </page>
"""


def _write_dump(path: Path, pages: list[dict]) -> Path:
    body = "".join(
        _DUMP_PAGE.format(redirect='\n    <redirect title="X" />' if page.get("redirect_element") else "", **page)
        for page in pages
    )
    xml = (
        '<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" version="0.10" xml:lang="en">\n'
        "  <siteinfo><sitename>Test</sitename></siteinfo>\n" + body + "</mediawiki>\n"
    )
    with bz2.open(path, "wt", encoding="utf-8") as out:
        out.write(xml)
    return path


@pytest.fixture
def tiny_dump(tmp_path: Path) -> Path:
    # Text is XML-escaped the way dumps store it: <ref> arrives as &lt;ref&gt;.
    return _write_dump(
        tmp_path / "tiny.xml.bz2",
        [
            {
                "title": "Alpha",
                "ns": 0,
                "id": 12,
                "text": "'''Alpha''' is a [[letter|Greek letter]].&lt;ref&gt;Cite&lt;/ref&gt;\n\n== Use ==\nMaths.",
            },
            {"title": "Old name", "ns": 0, "id": 13, "text": "#REDIRECT [[Alpha]]", "redirect_element": True},
            {"title": "Wikipedia:About", "ns": 4, "id": 14, "text": "Project page, not an article."},
            {"title": "Beta", "ns": 0, "id": 15, "text": "{{Infobox|x=1}}\nBeta &amp;amp; gamma [[Category:Letters]]"},
            {"title": "Lower redirect", "ns": 0, "id": 16, "text": "  #redirect [[Beta]]"},
        ],
    )


def test_dump_keeps_main_namespace_articles_only(tiny_dump: Path):
    assert wiki_documents(tiny_dump) == [
        Document(id="12", title="Alpha", text="Alpha is a Greek letter.\n\nUse\nMaths."),
        Document(id="15", title="Beta", text="Beta & gamma"),
    ]
    assert load_documents(tiny_dump) == wiki_documents(tiny_dump)  # dispatch on .xml.bz2


def test_dump_errors_name_the_file(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="nope.xml.bz2"):
        wiki_documents(tmp_path / "nope.xml.bz2")
    corrupt = tmp_path / "corrupt.xml.bz2"
    corrupt.write_bytes(b"not bz2 at all")
    with pytest.raises(ValueError, match="corrupt.xml.bz2.*cannot be parsed"):
        wiki_documents(corrupt)
    only_redirects = _write_dump(tmp_path / "r.xml.bz2", [{"title": "R", "ns": 0, "id": 1, "text": "#REDIRECT [[X]]"}])
    with pytest.raises(ValueError, match="r.xml.bz2 has no main-namespace articles"):
        wiki_documents(only_redirects)


def test_wiki_sample_parses():
    """The real embedded sample (CI fetches it during setup; else this downloads it)."""
    docs = load_documents("wiki-sample")
    assert len(docs) == 106  # 206 pages: 100 redirects, 1 project page (ns 4)
    assert len({doc.id for doc in docs}) == len(docs)
    total_chars = sum(len(doc.text) for doc in docs)
    assert 2_500_000 < total_chars < 3_500_000, total_chars
    by_title = {doc.title: doc for doc in docs}
    assert by_title["Anarchism"].id == "12"
    assert by_title["Anarchism"].text.startswith("Anarchism is a political philosophy that advocates self-governed")
    for doc in docs:
        for leftover in ("{{", "}}", "[[", "]]", "<ref", "'''", "{|"):
            assert leftover not in doc.text, (doc.title, leftover)


# ------------------------------------------------------------------ fetch_wiki_sample


def _fake_wheel(path: Path, member_bytes: bytes | None) -> Path:
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("gensim/__init__.py", "")
        if member_bytes is not None:
            wheel.writestr(wiki._WIKI_SAMPLE_MEMBER, member_bytes)
    return path


def test_fetch_from_wheel_verifies_and_writes_atomically(tmp_path: Path):
    real = fetch_wiki_sample()  # default cache, see test_wiki_sample_parses
    cache = tmp_path / "cache"
    wheel = _fake_wheel(tmp_path / "gensim-4.4.0-py3-none-any.whl", real.read_bytes())
    fetched = fetch_wiki_sample(cache, wheel=wheel)
    assert fetched.read_bytes() == real.read_bytes()
    assert sorted(p.name for p in fetched.parent.iterdir()) == [fetched.name]  # no temp files left
    assert fetch_wiki_sample(cache) == fetched  # cached: no wheel, no network needed

    with pytest.raises(ValueError, match="has no member"):
        fetch_wiki_sample(tmp_path / "c2", wheel=_fake_wheel(tmp_path / "empty.whl", None))
    with pytest.raises(ValueError, match="truncated or corrupt"):
        fetch_wiki_sample(tmp_path / "c3", wheel=_fake_wheel(tmp_path / "bad.whl", b"BZh9 not really"))
    other_dump = bz2.compress(b"<mediawiki>something else</mediawiki>")
    with pytest.raises(ValueError, match="sha256"):
        fetch_wiki_sample(tmp_path / "c4", wheel=_fake_wheel(tmp_path / "other.whl", other_dump))
    assert not (tmp_path / "c4" / "corpora").exists() or not any((tmp_path / "c4" / "corpora").iterdir())


def test_fetch_reports_pip_failure_with_manual_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(wiki, "_wiki_sample_from_installed_gensim", lambda: None)
    failing_pip = [sys.executable, "-c", "import sys; sys.stderr.write('ERROR: No matching distribution'); sys.exit(1)"]
    manual_pip = ["pip", "download", "gensim"]
    monkeypatch.setattr(wiki, "_pip_download_command", lambda dest: manual_pip if dest == "DIR" else failing_pip)
    with pytest.raises(RuntimeError, match=r"(?s)pip exited 1.*No matching distribution.*run by hand.*--wheel"):
        fetch_wiki_sample(tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_fetch_downloads_the_pinned_wheel_with_pip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The real `pip download` path (needs PyPI; pip's cache makes reruns cheap)."""
    monkeypatch.setattr(wiki, "_wiki_sample_from_installed_gensim", lambda: None)
    fetched = fetch_wiki_sample(tmp_path)
    assert fetched.read_bytes() == fetch_wiki_sample().read_bytes()
    assert [p.name for p in fetched.parent.iterdir()] == [fetched.name]


def test_default_cache_dir_follows_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PRUNE_JAX_CACHE", str(tmp_path))
    assert cache.default_cache_dir() == tmp_path
    monkeypatch.setenv("PRUNE_JAX_CACHE", "")
    assert cache.default_cache_dir() == Path.home() / ".cache" / "prune_jax"


# ------------------------------------------------------------------ local files


def test_txt_document_rules(tmp_path: Path):
    one = tmp_path / "one.txt"
    one.write_text("Para one.\n\nPara two.\n", encoding="utf-8")
    assert [d.text for d in load_documents(one)] == ["Para one.\n\nPara two."]

    blank_lines = tmp_path / "two.txt"
    blank_lines.write_text("Doc one.\n\nstill one.\n\n\nDoc two.\n \n\t\n\nDoc three.", encoding="utf-8")
    docs = load_documents(blank_lines)
    assert [d.text for d in docs] == ["Doc one.\n\nstill one.", "Doc two.", "Doc three."]
    assert [d.title for d in docs] == ["two.txt [0]", "two.txt [1]", "two.txt [2]"]

    form_feeds = tmp_path / "ff.txt"
    form_feeds.write_text("A\n\n\n\nstill A\f\fB", encoding="utf-8")  # form feeds win over blank lines
    assert [d.text for d in load_documents(form_feeds)] == ["A\n\n\n\nstill A", "B"]


def test_ids_hash_the_text_so_they_survive_reordering(tmp_path: Path):
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("x\n\n\ny", encoding="utf-8")
    second.write_text("new\n\n\ny\n\n\nx", encoding="utf-8")
    ids_first = {d.text: d.id for d in load_documents(first)}
    ids_second = {d.text: d.id for d in load_documents(second)}
    assert ids_first["x"] == ids_second["x"] and ids_first["y"] == ids_second["y"]
    assert ids_first["x"] != ids_first["y"]


def test_jsonl_loader(tmp_path: Path):
    path = tmp_path / "c.jsonl"
    records = [{"text": "first", "id": 7, "title": "T"}, {"text": "second"}, {"text": "   "}]
    lines = [json.dumps(records[0]), json.dumps(records[1]), "", json.dumps(records[2])]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    docs = load_documents(str(path))
    assert docs[0] == Document(id="7", title="T", text="first")
    assert docs[1].text == "second" and docs[1].id.startswith("sha256:") and docs[1].title == f"{path} line 2"
    assert len(docs) == 2  # blank line and blank text skipped


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "ok"}\n{"body": "x"}\n', r"line 2: no `text` field \(fields: \['body'\]\)"),
        ('{"text": "ok"}\n{"text": 3}\n', r"line 2: `text` is int, expected a string"),
        ('{"text": "ok"}\n\n{"text": \n', r"line 3: invalid JSON"),
        ('["text"]\n', r"line 1: expected a JSON object"),
        ('{"text": ""}\n', r"has no records with non-blank `text`"),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path: Path, content: str, message: str):
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message) as err:
        load_documents(path)
    assert "bad.jsonl" in str(err.value)


def test_loader_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        load_documents(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text(" \n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty.txt is empty"):
        load_documents(tmp_path / "empty.txt")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match="latin1.txt is not UTF-8"):
        load_documents(tmp_path / "latin1.txt")
    (tmp_path / "c.csv").write_text("text\nx\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"c.csv: unknown file type; expected .txt, .jsonl"):
        load_documents(tmp_path / "c.csv")
    with pytest.raises(ValueError, match="is not a file"):
        load_documents(tmp_path)

    (tmp_path / "c.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # importing it now raises ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ImportError, match="pip install pyarrow"):
        load_documents(tmp_path / "c.parquet")

    with pytest.raises(ValueError, match=r"expected hf:<dataset>:<split>"):
        load_documents("hf:wikitext")
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match="pip install datasets"):
        load_documents("hf:wikitext:wikitext-2-raw-v1:test")


def test_parquet_loader(tmp_path: Path):
    pa = pytest.importorskip("pyarrow", reason="pyarrow is optional")
    import pyarrow.parquet as pq

    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": ["one", "", "two"], "title": ["A", "B", "C"]}), path)
    docs = load_documents(path)
    assert [(d.title, d.text) for d in docs] == [("A", "one"), ("C", "two")]
    pq.write_table(pa.table({"body": ["x"]}), path)
    with pytest.raises(ValueError, match=r"no `text` column \(columns: \['body'\]\)"):
        load_documents(path)


# ------------------------------------------------------------------ splits


def _docs(count: int, prefix: str = "d") -> list[Document]:
    return [Document(id=f"{prefix}{i}", title=f"T{i}", text=f"text {i}") for i in range(count)]


def test_split_is_deterministic_disjoint_and_complete():
    docs = _docs(200)
    calibration, evaluation = split_documents(docs, eval_fraction=0.3, seed=4)
    assert (calibration, evaluation) == split_documents(docs, eval_fraction=0.3, seed=4)
    assert {d.id for d in calibration}.isdisjoint({d.id for d in evaluation})
    assert sorted(d.id for d in calibration + evaluation) == sorted(d.id for d in docs)
    assert calibration == [d for d in docs if d in calibration]  # input order kept
    assert 40 <= len(evaluation) <= 80  # 0.3 * 200 = 60 in expectation
    assert split_documents(docs, eval_fraction=0.3, seed=5) != (calibration, evaluation)


def test_split_is_stable_when_documents_are_added():
    docs = _docs(50)
    _, evaluation = split_documents(docs, seed=1)
    grown = docs[:10] + _docs(20, prefix="new") + docs[10:]
    _, grown_evaluation = split_documents(grown, seed=1)
    assert {d.id for d in grown_evaluation if not d.id.startswith("new")} == {d.id for d in evaluation}


@pytest.mark.parametrize("eval_fraction", [0.01, 0.5, 0.99])
def test_split_parts_are_never_empty(eval_fraction: float):
    for seed in range(30):
        calibration, evaluation = split_documents(_docs(2), eval_fraction=eval_fraction, seed=seed)
        assert len(calibration) == 1 and len(evaluation) == 1


def test_split_errors():
    with pytest.raises(ValueError, match=r"eval_fraction=1.0; expected a float strictly between 0 and 1"):
        split_documents(_docs(5), eval_fraction=1.0)
    with pytest.raises(ValueError, match="at least 2 documents with distinct ids, got 2"):
        split_documents([Document("same", "", "a"), Document("same", "", "b")])


# ------------------------------------------------------------------ windows


def test_eval_windows_are_consecutive_and_drop_the_remainder():
    tokens = np.arange(103, dtype=np.int32)
    windows = eval_windows(tokens, 10)
    assert windows.shape == (10, 10) and windows.dtype == np.int32
    np.testing.assert_array_equal(windows.ravel(), np.arange(100))
    np.testing.assert_array_equal(eval_windows(tokens, 10, max_windows=3), windows[:3])
    assert eval_windows(tokens, 10, max_windows=50).shape == (10, 10)
    assert eval_windows(tokens, 103).shape == (1, 103)


def test_eval_windows_errors():
    with pytest.raises(ValueError, match="5 tokens, fewer than one window of seq_len=6"):
        eval_windows(np.arange(5), 6)
    with pytest.raises(ValueError, match="seq_len must be a positive int, got 0"):
        eval_windows(np.arange(5), 0)
    with pytest.raises(ValueError, match="max_windows must be a positive int or None, got 0"):
        eval_windows(np.arange(5), 2, max_windows=0)
    with pytest.raises(ValueError, match=r"1-D integer array, got shape \(2, 3\)"):
        eval_windows(np.zeros((2, 3), dtype=np.int32), 2)


def test_calibration_batches_are_disjoint_windows_deterministic_in_seed():
    tokens = np.arange(1000, dtype=np.int32)  # token value == position
    batches = calibration_batches(tokens, num_samples=12, seq_len=50, seed=0)
    assert batches.shape == (12, 50) and batches.dtype == np.int32
    starts = batches[:, 0]
    np.testing.assert_array_equal(batches, starts[:, None] + np.arange(50))  # contiguous windows
    assert np.all(np.diff(np.sort(starts)) >= 50)  # pairwise non-overlapping
    assert starts.max() + 50 <= 1000
    np.testing.assert_array_equal(batches, calibration_batches(tokens, num_samples=12, seq_len=50, seed=0))
    assert not np.array_equal(batches, calibration_batches(tokens, num_samples=12, seq_len=50, seed=1))
    # Placement is not restricted to a seq_len grid.
    starts_over_seeds = [calibration_batches(tokens, num_samples=12, seq_len=50, seed=s)[:, 0] for s in range(5)]
    all_starts = np.concatenate(starts_over_seeds)
    assert np.any(all_starts % 50 != 0)


def test_calibration_batches_exact_fit_and_errors():
    tokens = np.arange(60, dtype=np.int32)
    batches = calibration_batches(tokens, num_samples=6, seq_len=10, seed=3)
    np.testing.assert_array_equal(np.sort(batches[:, 0]), np.arange(0, 60, 10))  # no slack: the grid, shuffled
    with pytest.raises(ValueError, match=r"need 70 tokens, but the stream has 60; use at most 6 samples"):
        calibration_batches(tokens, num_samples=7, seq_len=10, seed=0)
    with pytest.raises(ValueError, match="num_samples must be a positive int, got 0"):
        calibration_batches(tokens, num_samples=0, seq_len=10, seed=0)


# ------------------------------------------------------------------ tokenize_corpus

_SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "a lazy dog sleeps in the warm sun",
    "the fox and the dog are friends now",
    "pruning a model keeps the important channels",
]


@pytest.fixture(scope="module")
def tiny_tokenizer(bpe_tokenizer):
    """Factory of BPE tokenizers trained on `_SENTENCES` whose post-processor adds a BOS, as LLaMA's does.

    Each call builds a new object: the token cache must recognise an equal tokenizer.
    """
    def build(vocab_size: int = 120):
        return bpe_tokenizer(_SENTENCES, vocab_size, special_tokens=["<s>"], bos_token="<s>", prepend_bos=True)

    return build


def test_tokenize_corpus_encodes_joined_text_without_bos(tmp_path: Path, tiny_tokenizer):
    tokenizer = tiny_tokenizer()
    docs = [Document(str(i), "", text) for i, text in enumerate(_SENTENCES)]
    messages: list[str] = []
    tokens = tokenize_corpus(docs, tokenizer, cache_dir=tmp_path, progress=messages.append)
    joined = "\n\n".join(_SENTENCES)
    assert tokens.dtype == np.int32 and tokens.ndim == 1
    np.testing.assert_array_equal(tokens, tokenizer.encode(joined, add_special_tokens=False))
    assert tokenizer(joined)["input_ids"][0] == tokenizer.bos_token_id  # the tokenizer would add one...
    assert tokens[0] != tokenizer.bos_token_id  # ...but the corpus stream has none
    assert messages[0].startswith("tokenising") and "tokenised into" in messages[-1]


def test_tokenize_corpus_cache_hit_returns_identical_tokens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           tiny_tokenizer):
    docs = [Document(str(i), "", text) for i, text in enumerate(_SENTENCES)]
    stream = tokenize_corpus(docs, tiny_tokenizer(), cache_dir=tmp_path)
    cached_files = list((tmp_path / "tokens").iterdir())
    assert [p.suffix for p in cached_files] == [".npy"]  # one complete file, no temp files

    def fail(*args):
        raise AssertionError("cache hit expected, but the corpus was tokenised again")

    monkeypatch.setattr(token_stream, "_encode", fail)
    messages: list[str] = []
    again = tokenize_corpus(docs, tiny_tokenizer(), cache_dir=tmp_path, progress=messages.append)
    np.testing.assert_array_equal(again, stream)
    assert again.dtype == np.int32 and messages[0].startswith("cache hit")

    # Other text or another tokenizer is a different cache entry.
    with pytest.raises(AssertionError, match="cache hit expected"):
        tokenize_corpus(docs[:3], tiny_tokenizer(), cache_dir=tmp_path)
    with pytest.raises(AssertionError, match="cache hit expected"):
        tokenize_corpus(docs, tiny_tokenizer(vocab_size=90), cache_dir=tmp_path)


def test_tokenize_corpus_errors(tmp_path: Path, tiny_tokenizer):
    with pytest.raises(ValueError, match="at least one document"):
        tokenize_corpus([], tiny_tokenizer(), cache_dir=tmp_path)


# ------------------------------------------------------------------ command line


def test_cli_fetch_and_stats(tmp_path: Path):
    """`prune-jax data fetch|stats`: the path on stdout, counts, and errors as exit 2 with a message."""
    runner = CliRunner()
    wheel = _fake_wheel(tmp_path / "g.whl", fetch_wiki_sample().read_bytes())
    result = runner.invoke(app, ["data", "fetch", "--cache-dir", str(tmp_path / "cache"), "--wheel", str(wheel)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(tmp_path / "cache" / "corpora" / wiki._WIKI_SAMPLE_FILENAME)
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": f"doc {i}"}) for i in range(10)), encoding="utf-8")
    result = runner.invoke(app, ["data", "stats", str(corpus)])
    assert result.exit_code == 0, result.output
    calibration, evaluation = split_documents(load_documents(corpus))
    assert result.stdout.splitlines() == [
        f"{corpus}: 10 documents, 50 characters",
        f"  calibration: {len(calibration)} documents, {5 * len(calibration)} characters",
        f"  evaluation: {len(evaluation)} documents, {5 * len(evaluation)} characters",
    ]
    for args, message in (
        (["stats", str(tmp_path / "missing.txt")], "missing.txt"),
        (["fetch", "--cache-dir", str(tmp_path / "c2"), "--wheel", str(tmp_path / "missing.whl")], "missing.whl"),
    ):
        result = runner.invoke(app, ["data", *args])
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, result.output


def test_python_dash_m_prune_jax_cli_data_is_the_data_command(monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]):
    """`python -m prune_jax.cli data` (for scripts and the manual-download message) runs `prune-jax data`."""
    monkeypatch.setattr(sys, "argv", ["python -m prune_jax.cli", "data", "fetch", "--help"])
    with pytest.raises(SystemExit) as done:
        runpy.run_module("prune_jax.cli", run_name="__main__")
    assert done.value.code == 0
    assert "--wheel" in capsys.readouterr().out


def test_a_single_long_text_becomes_paragraph_chunks(tmp_path: Path):
    paragraphs = [f"Paragraph {i}: " + "word " * (40 + 7 * (i % 5)) for i in range(120)]
    text = "\n\n".join(p.strip() for p in paragraphs)
    path = tmp_path / "notes.txt"
    path.write_text(text + "\n", encoding="utf-8")
    docs = load_documents(path)
    assert len(docs) > 4 and len({d.id for d in docs}) == len(docs)
    assert "\n\n".join(d.text for d in docs) == text  # the joined stream is the whole text
    assert all(len(d.text) >= 4000 for d in docs[:-1]) and len(docs[-1].text) >= 2000
    calibration, evaluation = split_documents(docs)
    assert calibration and evaluation
    # no paragraph is cut in half
    assert {p for d in docs for p in d.text.split("\n\n")} == {p.strip() for p in paragraphs}
    assert paragraph_chunks("one paragraph only") == ["one paragraph only"]
