"""Rebuild data/gutenberg/ and data/eval/heldout-gutenberg.txt.gz from the shared Gutenberg fiction corpus.

    python scripts/build_gutenberg_data.py /work/shared/data/gutenberg

Selection (documented in data/README.md), deterministic and by whole books only:
- held out: from the last shard, in its (already shuffled) document order, books of 100-500 KB until 1.2 MB;
- training: every other book, shards in order and documents in order, until TRAIN_BYTES (the gutenberg
  family's largest budget, 134M tokens, is then about 3 epochs at the measured 3.0 bytes/token).
Training text is written in chunks of about CHUNK_BYTES, each a run of whole books separated by
"<|endoftext|>\\n" lines; gzip with mtime 0 so the files are byte-reproducible.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import sys
from pathlib import Path

TRAIN_BYTES = 135_000_000
CHUNK_BYTES = 34_000_000
HELDOUT_BYTES = 1_200_000
SEP = "<|endoftext|>\n"
REPO = Path(__file__).resolve().parents[1]


def write_gz(path: Path, text: str) -> None:
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz:
        gz.write(text.encode("utf-8"))


def main(src: Path) -> None:
    rows = list(csv.DictReader(open(src / "books.tsv", encoding="utf-8"), delimiter="\t"))
    shards = sorted({r["shard"] for r in rows})
    docs = {}
    for shard in shards:
        texts = gzip.open(src / shard, "rt", encoding="utf-8").read().split(SEP)
        for r in (r for r in rows if r["shard"] == shard):
            text = texts[int(r["doc_index"])]
            assert hashlib.sha256(text.encode()).hexdigest() == r["clean_sha256"], (shard, r["doc_index"])
            docs[(shard, int(r["doc_index"]))] = text
    heldout, size = [], 0
    for r in (r for r in rows if r["shard"] == shards[-1]):
        if size < HELDOUT_BYTES and 100_000 <= int(r["clean_bytes"]) <= 500_000:
            heldout.append(r)
            size += int(r["clean_bytes"])
    held = {(r["shard"], r["doc_index"]) for r in heldout}
    train, size = [], 0
    for r in rows:
        if size >= TRAIN_BYTES:
            break
        if (r["shard"], r["doc_index"]) not in held:
            train.append(r)
            size += int(r["clean_bytes"])
    out = REPO / "data/gutenberg"
    out.mkdir(parents=True, exist_ok=True)
    chunks, current, n = [], [], 0
    for r in train:
        current.append(r)
        n += int(r["clean_bytes"])
        if n >= CHUNK_BYTES:
            chunks.append(current)
            current, n = [], 0
    chunks += [current] if current else []
    fields = ["split", "file", "shard", "doc_index", "pg_ebook", "title", "author_normalized", "clean_bytes",
              "clean_sha256"]
    with open(out / "books.tsv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(fields)
        for i, chunk in enumerate(chunks):
            name = f"train-{i:02d}.txt.gz"
            write_gz(out / name, "".join(docs[(r["shard"], int(r["doc_index"]))] + SEP for r in chunk))
            for r in chunk:
                w.writerow(["train", f"gutenberg/{name}"] + [r[k] for k in fields[2:]])
        write_gz(REPO / "data/eval/heldout-gutenberg.txt.gz",
                 "\n\n".join(docs[(r["shard"], int(r["doc_index"]))].strip("\n") for r in heldout) + "\n")
        for r in heldout:
            w.writerow(["heldout", "eval/heldout-gutenberg.txt.gz"] + [r[k] for k in fields[2:]])
    print(f"train: {len(train)} books, {sum(int(r['clean_bytes']) for r in train):,} bytes in {len(chunks)} files; "
          f"held out: {len(heldout)} books, {sum(int(r['clean_bytes']) for r in heldout):,} bytes")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
