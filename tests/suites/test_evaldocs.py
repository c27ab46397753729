"""An eval that is a set of documents: a list of files, a folder, a declared separator, an even max_tokens cap."""

import json
import sqlite3
import textwrap
from pathlib import Path

import pytest

from qsens.metrics.protocol import Protocol, resolve_protocol
from qsens.metrics.text import split_documents
from qsens.metrics.windows import build_eval_tokens, even_shares
from qsens.suites.load import SuiteError, load_suite

REPO = Path(__file__).resolve().parents[2]
DOCS = {"a.txt": "It is a truth universally acknowledged. " * 40, "b.txt": "The caliph Vathek ate. " * 90,
        "c.txt": "Short one here."}


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(REPO / "checkpoints/micro/tokenizer")


def _suite(tmp_path: Path, path: str, protocol: str = "{context_length: 32}") -> Path:
    folder = tmp_path / "docs"
    folder.mkdir(exist_ok=True)
    for name, text in DOCS.items():
        (folder / name).write_text(text)
    suite = tmp_path / "suite.yaml"
    suite.write_text(textwrap.dedent(f"""
        name: docs
        families:
          - name: micro
            manifest: {REPO}/checkpoints/micro/manifest.json
            select: {{size: [s24], schedule: [cosine]}}
        quantizers:
          - {{method: rtn, bits: 4, group_size: 8}}
        evals:
          - {{name: docs, path: {path}, preset: qsens, protocol: {protocol}}}
    """))
    return suite


@pytest.mark.parametrize("path", ["docs", "[docs/a.txt, docs/b.txt, docs/c.txt]"])
def test_a_folder_or_a_list_is_one_document_per_file_each_scored_on_its_own(tmp_path, tokenizer, path):
    ev = load_suite(_suite(tmp_path, path)).evals[0]
    assert [p.name for p in ev.documents] == ["a.txt", "b.txt", "c.txt"]
    assert ev.protocol.unit == "document" and ev.protocol.split == "separator"
    tokens = build_eval_tokens(ev.read(), tokenizer, ev.protocol)
    # every window lies in one document; a document of n tokens in windows of 32 (first token of each
    # window context only) scores n - ceil(n / 32) targets
    for d, text in enumerate(DOCS.values()):
        n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        in_doc = [k for k, doc in enumerate(tokens.window_docs()) if doc == d]
        assert sum(tokens.windows[k][2] for k in in_doc) == n - -(-n // 32)


def test_document_evals_refuse_a_split_of_their_own_naming_the_key(tmp_path):
    with pytest.raises(SuiteError, match=r"evals\[0\].protocol.split: is set by a list or folder"):
        load_suite(_suite(tmp_path, "docs", "{split: lines}"))
    with pytest.raises(SuiteError, match=r"evals\[0\].path: a document is listed twice"):
        load_suite(_suite(tmp_path, "[docs/a.txt, docs/a.txt]"))


def test_a_declared_separator_cuts_a_file_there():
    assert split_documents("one\n<|endoftext|>\ntwo\n<|endoftext|>\n", "separator", "\n<|endoftext|>\n") == ["one", "two"]
    with pytest.raises(ValueError, match="go together"):
        Protocol(split="separator")


def test_even_shares_water_fill_the_cap():
    assert even_shares([100, 5000, 3000], 1000) == [100, 450, 450]
    assert even_shares([10, 10], 1000) == [10, 10]
    assert even_shares([7, 7, 7], 10) == [4, 3, 3]


def test_an_even_cap_takes_an_equal_share_from_the_start_of_every_document(tokenizer):
    text = "\x1e".join(DOCS.values())
    protocol = Protocol(unit="document", split="separator", separator="\x1e", context_length=32, max_tokens=200,
                        max_tokens_rule="even")
    tokens = build_eval_tokens(text, tokenizer, protocol)
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in DOCS.values()]
    short = lengths[2]
    scored = {d: 0 for d in range(3)}
    for (_, _, n_targets), d in zip(tokens.windows, tokens.window_docs()):
        scored[int(d)] += n_targets
    # the short document whole, the rest of the cap halved; of a share of n tokens, n - ceil(n / 32) are scored
    shares = [(200 - short + 1) // 2, (200 - short) // 2, short]
    assert scored == {d: n - -(-n // 32) for d, n in enumerate(shares)}


def test_published_cells_keep_their_protocol_hashes():
    db = sqlite3.connect(REPO / "results/published/micro/qsens.sqlite")
    for stored_hash, stored in db.execute("select distinct protocol_hash, protocol_json from cells"):
        assert Protocol.model_validate(json.loads(stored)).hash() == stored_hash
    assert resolve_protocol("qsens", {"max_tokens": 65536}).hash() == "576dee6c7da2384b"


def test_the_heldout_gutenberg_books_are_the_listed_books_one_file_each():
    import csv
    import gzip
    import hashlib

    rows = [r for r in csv.DictReader(open(REPO / "data/gutenberg/books.tsv"), delimiter="\t") if r["split"] == "heldout"]
    files = sorted((REPO / "data/eval/heldout-gutenberg").iterdir())
    assert len(files) == len(rows) == 5
    for f, r in zip(files, rows):
        raw = gzip.decompress(f.read_bytes())
        assert (len(raw), hashlib.sha256(raw).hexdigest()) == (int(r["clean_bytes"]), r["clean_sha256"])
    # and they are the joined file's books, in its order, joined by one newline
    joined = gzip.decompress((REPO / "data/eval/heldout-gutenberg.txt.gz").read_bytes())
    assert joined == b"\n".join(gzip.decompress(f.read_bytes()) for f in files)


def test_the_whole_document_micro_suite_scores_both_novels_and_every_article():
    suite = load_suite(REPO / "suites/micro-documents.yaml")
    novels, wiki = suite.evals
    assert [p.name for p in novels.documents] == ["PrideAndPrejudice.txt.gz", "Vathek.txt.gz"]
    assert novels.protocol.max_tokens is None and wiki.protocol.max_tokens is None
    assert (wiki.protocol.unit, wiki.protocol.split) == ("document", "wikitext_articles")
    assert {c.train_seed for c in suite.checkpoints} >= {0, 1}
    assert [s.label() for s in suite.quantizers if s.method == "cast"] == ["cast-float16-linears"]


def test_a_document_that_is_a_symlink_loop_is_named_not_a_crash(tmp_path):
    from qsens.suites.evaldocs import document_files

    (tmp_path / "good.txt").write_text("a real document\n")
    (tmp_path / "loop-a.txt").symlink_to(tmp_path / "loop-b.txt")
    (tmp_path / "loop-b.txt").symlink_to(tmp_path / "loop-a.txt")
    paths, problems = document_files(["good.txt", "loop-a.txt"], tmp_path)
    assert paths is None and [k for k, _ in problems] == ["path[1]"] and "symlink loop" in problems[0][1]
