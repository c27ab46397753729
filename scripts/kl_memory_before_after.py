"""Peak RSS and temp disk of one quantized cell with KL at a real vocabulary: the stored-fp-logits design (qsens
before issue 14) beside `score_together`, in one process.

    git show 37db9bc:qsens/metrics/scoring.py > /tmp/old_scoring.py
    python -m qsens.testbed.standins pythia-160m /tmp/st160-l2 --layers 2 --tokenizer-vocab 4096
    OMP_NUM_THREADS=1 python scripts/kl_memory_before_after.py /tmp/st160-l2 2048,8192 /tmp/old_scoring.py

Prints one JSON line per T: peak RSS above the loaded models (MB), temp disk (MB), seconds, and how far the
two designs' per-token KL differ. QSENS_KL_IN_MEMORY_BYTES=0 makes the old design use its temp file, as it does
for any eval above 2 GB of logits.
"""
import importlib.util, json, os, sys, time
os.environ["QSENS_KL_IN_MEMORY_BYTES"] = "0"   # old design: temp file, as at real T (>2 GB)
import torch
torch.set_num_threads(1)
from transformers import AutoModelForCausalLM, AutoTokenizer
from qsens.metrics.resources import measured, peak_rss_bytes, reset_peak_rss
from qsens.metrics.scoring import score_together
from qsens.metrics.text import read_text
from qsens.metrics.windows import build_eval_tokens
from qsens.metrics.protocol import Protocol
from qsens.bench.score import quantized_copies
spec = importlib.util.spec_from_file_location("old_scoring", sys.argv[3])
old = importlib.util.module_from_spec(spec); sys.modules["old_scoring"] = old; spec.loader.exec_module(old)
d = sys.argv[1]; Ts = [int(x) for x in sys.argv[2].split(",")]
tok = AutoTokenizer.from_pretrained(d); model = AutoModelForCausalLM.from_pretrained(d).eval()
q = quantized_copies(model, tok, torch.device("cpu"), 1)[0]
text = read_text("data/eval/heldout-novels.txt.gz")
cpu = torch.device("cpu")
res = []
for T in Ts:
    tokens = build_eval_tokens(text, tok, Protocol(context_length=128, max_tokens=T))
    import gc; gc.collect()
    reset_peak_rss(); base = peak_rss_bytes()
    with measured(cpu, poll_s=0.1) as u:
        t0 = time.perf_counter()
        ref = old.score_reference(model, tokens, cpu, 8, keep_logits=True)
        qs = old.score_quantized(q, tokens, ref, cpu, 8)
        t_old = time.perf_counter() - t0
        kl_old = qs.kl.copy(); ref.close()
    res.append(dict(design="old: stored fp logits", T=tokens.n_targets, peak_rss_above_model_MB=(u.peak_rss_bytes-base)/2**20, temp_disk_MB=u.temp_disk_bytes/2**20, seconds=t_old))
    gc.collect()
    reset_peak_rss(); base = peak_rss_bytes()
    with measured(cpu, poll_s=0.1) as u:
        t0 = time.perf_counter()
        ref2, out = score_together(model, {0: q}, tokens, cpu, 8, kl=True)
        t_new = time.perf_counter() - t0
    kl_new = out[0].kl
    res.append(dict(design="new: same-batch", T=tokens.n_targets, peak_rss_above_model_MB=(u.peak_rss_bytes-base)/2**20, temp_disk_MB=u.temp_disk_bytes/2**20, seconds=t_new,
                    kl_mean=float(kl_new.mean()), kl_mean_old=float(kl_old.mean()), kl_max_rel_diff=float((abs(kl_new-kl_old)/kl_old).max())))
    print(json.dumps(res[-2:]), flush=True)
