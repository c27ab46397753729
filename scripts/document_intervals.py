"""Issue 21: Δloss intervals of one stretch of text against intervals over whole documents (issue 12's cells).

    PYTHONPATH=. OMP_NUM_THREADS=1 python scripts/document_intervals.py [checkpoint-dir] > out.jsonl

s64 cosine 8M by default, RTN g8 asymmetric at 2/3/4/8 bits and the resolution floor (`cast` with scope linears:
the Δ of rounding the Linear weights RTN touches to fp16 and back). Per eval and setting prints Δloss, the
published-style interval (one stretch: the first 65,536 / 32,768 tokens, block bootstrap), and on whole documents
(Pride and Prejudice and Vathek as two documents; WikiText-2 test by article) the cell's own interval (documents
fixed) and the two-level interval over documents (`qsens.metrics.docinterval`) with its between-document share.
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from qsens.metrics.docinterval import document_interval
from qsens.metrics.paired import min_block_windows, sensitivity_metrics
from qsens.metrics.protocol import resolve_protocol
from qsens.metrics.scoring import score_together
from qsens.metrics.text import read_text
from qsens.metrics.windows import build_eval_tokens
from qsens.quantizers import cast, rtn
from qsens.quantizers.base import QuantContext

REPO = Path(__file__).resolve().parents[1]
ck = sys.argv[1] if len(sys.argv) > 1 else str(REPO / "checkpoints/micro/s64/cosine/s64-cosine-d008.000M")
cpu = torch.device("cpu")
tok = AutoTokenizer.from_pretrained(ck)
model = AutoModelForCausalLM.from_pretrained(ck, dtype=torch.float32).eval()
novels = "\x1e".join(read_text(REPO / f"data/novels/{n}.txt.gz") for n in ("PrideAndPrejudice", "Vathek"))
wiki = read_text(REPO / "data/wikitext-2/wiki.test.raw.gz")
EVALS = {  # name: (text, protocol)
    "heldout-novels/published": (read_text(REPO / "data/eval/heldout-novels.txt.gz"),
                                 resolve_protocol("qsens", {"max_tokens": 65536})),
    "heldout-novels/documents": (novels, resolve_protocol("qsens", {"unit": "document", "split": "separator",
                                                                     "separator": "\x1e"})),
    "wikitext2/published": (wiki, resolve_protocol("qsens", {"split": "lines_keepends", "joiner": "\n\n",
                                                            "max_tokens": 32768})),
    "wikitext2/articles": (wiki, resolve_protocol("qsens", {"unit": "document", "split": "wikitext_articles"})),
}
ctx = QuantContext(fp_model=model, tokenizer=tok, device=cpu, seed=0, calibration=None, checkpoint_dir=None)
quantized = {f"rtn-g8-{b}bit": rtn.quantize(ctx, rtn.Settings(bits=b, group_size=8, backend="torch")).model
             for b in (2, 3, 4, 8)}
floor = cast.Settings(dtype="float16", scope="linears")
quantized[floor.label()] = cast.quantize(ctx, floor).model
for name, (text, protocol) in EVALS.items():
    tokens = build_eval_tokens(text, tok, protocol)
    ref, scores = score_together(model, quantized, tokens, cpu, 16, kl=False)
    w, W = tokens.window_index.numpy(), len(tokens.windows)
    n = np.bincount(w, minlength=W).astype(float)
    for label, q in scores.items():
        m = sensitivity_metrics(tokens, ref, q, bootstrap_samples=1000, seed=0)
        d = np.bincount(w, weights=q.nll - ref.nll, minlength=W)
        r = document_interval(d, n, tokens.window_docs(), samples=1000, seed=0,
                              min_block=min_block_windows(n.sum(), W))
        print(json.dumps(dict(eval=name, setting=label, tokens=int(n.sum()), documents=r.n_documents,
                              delta_loss=m["delta_loss"], cell_ci=[m["delta_loss_ci_low"], m["delta_loss_ci_high"]],
                              document_ci=[r.ci_low, r.ci_high], scope=r.scope, between_share=r.between_share,
                              per_document=[round(x, 5) for x in r.per_document[:5]],
                              per_document_sd=float(np.std(r.per_document, ddof=1)) if r.n_documents > 1 else None)),
              flush=True)
    ref.close()
