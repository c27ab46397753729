"""qsens' `lm-eval` preset against lm-eval 0.4.13 itself on WikiText-2 test (all 62 pages by default).

    PYTHONPATH=. OMP_NUM_THREADS=1 python scripts/preset_vs_lm_eval.py [n_pages]

Uses the s64 cosine 8M micro checkpoint; lm-eval runs its own `wikitext` task over the pages written to a temp
folder (tests/metrics/test_presets.py does the same on 2 pages). Prints both sets of numbers.
"""

import json
import math
import re
import sys
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from qsens.metrics.scoring import score_reference
from qsens.metrics.text import read_text
from qsens.metrics.windows import build_eval_tokens, model_max_length
from qsens.metrics.protocol import resolve_protocol

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.metrics.test_presets import hf_document_level_pages, run_lm_eval  # noqa: E402

ck = REPO / "checkpoints/micro/s64/cosine/s64-cosine-d008.000M"
tok = AutoTokenizer.from_pretrained(ck)
model = AutoModelForCausalLM.from_pretrained(ck, dtype=torch.float32).eval()
raw = read_text(REPO / "data/wikitext-2/wiki.test.raw.gz")
pages = hf_document_level_pages(raw)
n_pages = int(sys.argv[1]) if len(sys.argv) > 1 else len(pages)
lines = raw.split("\n")
starts = [i for i, line in enumerate(lines) if re.fullmatch(r" = [^=].* = ", line)]
text = raw if n_pages >= len(pages) else "\n".join(lines[: starts[n_pages]])
tokens = build_eval_tokens(text, tok, resolve_protocol("lm-eval", {}), model_max_length(model.config, tok))
nll = score_reference(model, tokens, torch.device("cpu"), 16, keep_logits=False).nll.sum()
nb = int(tokens.target_bytes.sum())
print("qsens  ", json.dumps(dict(bits_per_byte=nll / math.log(2) / nb, byte_perplexity=math.exp(nll / nb),
                                 word_perplexity=math.exp(nll / tokens.n_words))))
with tempfile.TemporaryDirectory() as folder:
    print("lm-eval", json.dumps(run_lm_eval(model, tok, pages[:n_pages], Path(folder))))
