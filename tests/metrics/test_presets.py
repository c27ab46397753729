"""The `gptq` and `lm-eval` presets against the tools they are named after, on a shipped checkpoint.

Each preset is checked twice: against an independent transcription of the tool's text handling written here
(the HF dataset scripts that produce the rows/pages the tool reads), and against the tool's numbers: lm-eval
0.4.13 itself (its HFLM wrapping the loaded model, its `wikitext` task pointed at local pages), and GPTQ's
evaluation loop (IST-DASLab/gptq `datautils.get_wikitext2` + `llama_eval`), transcribed.
"""

import json
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from qsens.metrics.scoring import score_reference
from qsens.metrics.text import documents_for, read_text
from qsens.metrics.windows import build_eval_tokens, model_max_length
from qsens.metrics.protocol import resolve_protocol

REPO = Path(__file__).resolve().parents[2]
CHECKPOINT = REPO / "checkpoints/micro/s64/cosine/s64-cosine-d008.000M"
WIKI_TEST = REPO / "data/wikitext-2/wiki.test.raw.gz"


def hf_wikitext_rows(raw: str) -> list[str]:
    """HF `wikitext` dataset script (`wikitext-2-raw-v1`): `for row in f: yield row if row.strip() else ""`."""
    rows, line = [], ""
    for ch in raw:  # file iteration ends a row after each "\n"
        line += ch
        if ch == "\n":
            rows.append(line)
            line = ""
    if line:
        rows.append(line)
    return [r if r.strip() else "" for r in rows]


def hf_document_level_pages(raw: str) -> list[str]:
    """EleutherAI/wikitext_document_level dataset script: split on "\\n"; a title line opens a page; a page is
    its lines joined by "\\n"; whitespace-only pages are skipped, the last page is always yielded."""
    pages, current = [], []
    for line in raw.split("\n"):
        squashed = line.replace("= = =", "===").replace("= =", "==").strip()
        if squashed.startswith("= ") and squashed.endswith(" ="):
            if "\n".join(current).strip() != "":
                pages.append("\n".join(current))
            current = []
        current.append(line)
    pages.append("\n".join(current))
    return pages


@pytest.fixture(scope="module")
def micro():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(CHECKPOINT)
    model = AutoModelForCausalLM.from_pretrained(CHECKPOINT, dtype=torch.float32).eval()
    return model, tok


@pytest.fixture(scope="module")
def raw():
    return read_text(WIKI_TEST)


def test_gptq_rows_are_the_hf_rows(raw):
    proto = resolve_protocol("gptq", {})
    (stream,) = documents_for(raw, proto)
    assert stream == "\n\n".join(hf_wikitext_rows(raw))
    assert " \n" not in hf_wikitext_rows(raw)  # whitespace-only rows are empty strings, not " \n"


def test_lm_eval_pages_are_the_document_level_pages(raw):
    proto = resolve_protocol("lm-eval", {})
    sources = [src for _, src in documents_for(raw, proto, with_source=True)]
    assert sources == hf_document_level_pages(raw)
    assert len(sources) == 62  # the wikitext-2-raw-v1 test split of wikitext_document_level has 62 pages


def gptq_eval_nll(model, tokenizer, rows: list[str], seqlen: int) -> float:
    """IST-DASLab/gptq llama_eval: the "\\n\\n"-joined rows tokenized at once, nsamples = numel // seqlen windows,
    loss of each window's shifted logits; ppl = exp(sum(loss * seqlen) / (nsamples * seqlen)). Returns log ppl."""
    ids = tokenizer("\n\n".join(rows), return_tensors="pt").input_ids
    nsamples = ids.numel() // seqlen
    nlls = []
    with torch.no_grad():
        for i in range(nsamples):
            batch = ids[:, i * seqlen : (i + 1) * seqlen]
            logits = model(batch).logits.double()
            loss = torch.nn.functional.cross_entropy(logits[0, :-1], batch[0, 1:])
            nlls.append(loss.item() * seqlen)
    return sum(nlls) / (nsamples * seqlen)


def test_gptq_preset_matches_gptq_eval(micro, raw):
    model, tok = micro
    rows = hf_wikitext_rows(raw)[:250]
    text = "".join(r if r else " \n" for r in rows)  # the file these rows come from
    L = 128  # the micro model's positions; the preset's 2048 is for real models
    proto = resolve_protocol("gptq", {"context_length": L})
    tokens = build_eval_tokens(text, tok, proto)
    ref = score_reference(model, tokens, torch.device("cpu"), 16, keep_logits=False)
    assert ref.nll.mean() == pytest.approx(gptq_eval_nll(model, tok, rows, L), rel=1e-6)


def run_lm_eval(model, tok, pages: list[str], folder: Path) -> dict:
    """lm-eval 0.4.13's `wikitext` task (its own yaml and preprocess module) over local pages."""
    import lm_eval.tasks
    from lm_eval import evaluator
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    task_dir = Path(lm_eval.tasks.__file__).parent / "wikitext"
    with open(folder / "pages.jsonl", "w") as f:
        for p in pages:
            f.write(json.dumps({"page": p}) + "\n")
    shutil.copy(task_dir / "preprocess_wikitext.py", folder)
    yaml = (task_dir / "wikitext.yaml").read_text()
    yaml = yaml.replace("task: wikitext", "task: wikitext_local")
    yaml = yaml.replace("dataset_path: EleutherAI/wikitext_document_level",
                        f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {folder}/pages.jsonl")
    yaml = re.sub(r"(dataset_name|training_split|validation_split): .*\n", "", yaml)
    (folder / "wikitext_local.yaml").write_text(yaml)
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=16, device="cpu")
    res = evaluator.simple_evaluate(model=lm, tasks=["wikitext_local"], bootstrap_iters=0,
                                    task_manager=TaskManager(include_path=str(folder)))
    r = res["results"]["wikitext_local"]
    return {k: r[f"{k},none"] for k in ("bits_per_byte", "byte_perplexity", "word_perplexity")}


def test_lm_eval_preset_matches_lm_eval(micro, raw, tmp_path):
    pytest.importorskip("lm_eval")
    model, tok = micro
    n_pages = 2
    pages = hf_document_level_pages(raw)[:n_pages]
    lines = raw.split("\n")
    # the raw text up to (not including the newline before) the first line of page n_pages + 1: its split gives
    # exactly these pages
    starts = [i for i, line in enumerate(lines) if re.fullmatch(r" = [^=].* = ", line)]
    text = "\n".join(lines[: starts[n_pages]])
    proto = resolve_protocol("lm-eval", {})
    tokens = build_eval_tokens(text, tok, proto, model_max_length(model.config, tok))
    assert [src for _, src in documents_for(text, proto, with_source=True)] == pages
    ref = score_reference(model, tokens, torch.device("cpu"), 16, keep_logits=False)
    nll, n_bytes = ref.nll.sum(), int(tokens.target_bytes.sum())
    ours = dict(bits_per_byte=nll / math.log(2) / n_bytes, byte_perplexity=math.exp(nll / n_bytes),
                word_perplexity=math.exp(nll / tokens.n_words))
    theirs = run_lm_eval(model, tok, pages, tmp_path)
    for k in ours:
        assert ours[k] == pytest.approx(theirs[k], rel=1e-6), k
    # counts of the original pages, independently
    assert n_bytes == sum(len(p.encode("utf-8")) for p in pages)
    assert tokens.n_words == sum(len(re.split(r"\s+", p)) for p in pages)


def test_word_and_byte_counts_cover_exactly_the_scored_span(micro, raw):
    """With max_tokens truncating, words and bytes are those of the scored tokens' text, not of the whole file."""
    _, tok = micro
    proto = resolve_protocol("qsens", {"context_length": 16, "max_tokens": 500})
    tokens = build_eval_tokens(raw, tok, proto)
    enc = tok(raw[:20000], add_special_tokens=False, return_offsets_mapping=True)
    offs = enc["offset_mapping"]
    # token t (t = 1..499, t % 16 != 0: each 16-token window's first token is context) is scored and owns the
    # text from its start to the next token's start
    scored = [t for t in range(1, 500) if t % 16 != 0]
    spans = [(offs[t][0], offs[t + 1][0]) for t in scored]
    assert int(tokens.target_bytes.sum()) == sum(len(raw[a:b].encode("utf-8")) for a, b in spans)
    word_starts = {m.start() for m in re.finditer(r"\S+", raw[:20000])}
    assert tokens.n_words == sum(1 for a, b in spans for p in range(a, b) if p in word_starts)
    assert tokens.n_words < len(raw.split()) / 50  # not the whole file's words
    assert np.all(tokens.target_bytes.numpy() >= 0)


GUTENBERG = REPO / "checkpoints/gutenberg/h32/s0/wsd-f0.4/h32-s0-wsd-f0.4-d008.389M"


def test_lm_eval_preset_matches_lm_eval_with_a_tokenizer_that_adds_bos(raw, tmp_path):
    """Llama-family tokenizers add BOS themselves; lm-eval then feeds its prefix BOS before the encoded BOS and
    scores that second BOS as a target ([BOS] -> BOS, ...). The preset must do the same, on a Llama model."""
    pytest.importorskip("lm_eval")
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(GUTENBERG)
    bos = tok.bos_token
    tok._tokenizer.post_processor = TemplateProcessing(  # as LlamaTokenizerFast's add_bos_token=True builds it
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.bos_token_id)])
    assert tok("hello")["input_ids"][0] == tok.bos_token_id != tok("hello")["input_ids"][1]
    model = AutoModelForCausalLM.from_pretrained(GUTENBERG, dtype=torch.float32).eval()
    assert model.config.model_type == "llama"
    n_pages = 2
    pages = hf_document_level_pages(raw)[:n_pages]
    lines = raw.split("\n")
    starts = [i for i, line in enumerate(lines) if re.fullmatch(r" = [^=].* = ", line)]
    text = "\n".join(lines[: starts[n_pages]])
    tokens = build_eval_tokens(text, tok, resolve_protocol("lm-eval", {}), model_max_length(model.config, tok))
    assert tokens.windows[0][0][:2].tolist() == [tok.bos_token_id] * 2  # the prefix, then the tokenizer's own
    ref = score_reference(model, tokens, torch.device("cpu"), 16, keep_logits=False)
    nll, n_bytes = ref.nll.sum(), int(tokens.target_bytes.sum())
    ours = dict(bits_per_byte=nll / math.log(2) / n_bytes, byte_perplexity=math.exp(nll / n_bytes),
                word_perplexity=math.exp(nll / tokens.n_words))
    theirs = run_lm_eval(model, tok, pages, tmp_path)
    for k in ours:
        assert ours[k] == pytest.approx(theirs[k], rel=1e-6), k
    assert n_bytes == sum(len(p.encode("utf-8")) for p in pages)  # the scored BOS stands for no bytes
