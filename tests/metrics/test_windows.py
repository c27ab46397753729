"""Window plans against independent transcriptions of the protocols they reproduce."""

import pytest

from qsens.metrics.text import split_documents, wikitext_detokenize
from qsens.metrics.windows import build_eval_tokens, plan_windows
from qsens.metrics.protocol import Protocol, resolve_protocol


def lm_eval_rolling_windows(token_list, prefix_token, max_seq_len, context_len=1):
    """lm-evaluation-harness `get_rolling_token_windows`, transcribed from its published algorithm."""
    pred_len = max_seq_len - context_len + 1
    predicted = 0
    first_seq_len = min(max_seq_len, len(token_list))
    yield [prefix_token] + token_list[: first_seq_len - 1], token_list[:first_seq_len]
    predicted += first_seq_len
    while predicted < len(token_list):
        window_pred_len = min(len(token_list) - predicted, pred_len)
        window_end = predicted + window_pred_len
        yield token_list[window_end - max_seq_len - 1 : window_end - 1], token_list[window_end - window_pred_len : window_end]
        predicted += window_pred_len


def as_model_calls(seq, plans):
    """(input tokens, scored target tokens) per window of a plan over `seq`."""
    return [(seq[p.start : p.end], seq[p.t_lo : p.t_hi]) for p in plans]


@pytest.mark.parametrize("n_doc", [1, 2, 3, 4, 5, 7, 8, 9, 13, 40])
@pytest.mark.parametrize("L", [2, 3, 4, 8])
def test_rolling_windows_match_lm_eval(n_doc, L):
    doc = list(range(100, 100 + n_doc))
    seq = [0] + doc  # prefix token 0
    plans = plan_windows(len(seq), L, L, last_logit=True, drop_last=False, align_last=True)
    ours = as_model_calls(seq, plans)
    theirs = []
    for ctx, cont in lm_eval_rolling_windows(doc, 0, L):
        ctx = ctx[: len(ctx) - (len(cont) - 1)]  # lm-eval `make_disjoint_window`
        # lm-eval `_loglikelihood_tokens` feeds (ctx + cont)[-(L+1):][:-1] and scores the last len(cont) logits
        inp = (ctx + cont)[-(L + 1) :][:-1]
        theirs.append((inp, cont))
    assert ours == theirs


def test_gptq_windows_are_non_overlapping_and_drop_the_tail():
    n, L = 10_000, 2048
    plans = plan_windows(n, L, L, last_logit=False, drop_last=True)
    assert len(plans) == n // L  # GPTQ: nsamples = numel // seqlen
    for k, p in enumerate(plans):
        assert (p.start, p.end) == (k * L, (k + 1) * L)
        assert (p.t_lo, p.t_hi) == (k * L + 1, (k + 1) * L)  # first token of each window unscored


@pytest.mark.parametrize("n,L,S", [(50, 8, 8), (50, 8, 3), (51, 8, 1), (7, 8, 4), (100, 16, 5)])
def test_strided_windows_score_every_target_once_with_enough_context(n, L, S):
    plans = plan_windows(n, L, S, last_logit=False, drop_last=False)
    scored = [t for p in plans for t in range(p.t_lo, p.t_hi)]
    if S < L:
        assert scored == list(range(1, n))
    else:  # non-overlapping: a window's first token is context only
        assert scored == [t for t in range(1, n) if t % L != 0]
    for k, p in enumerate(plans):
        assert p.end - p.start <= L and p.start <= p.t_lo - 1 and p.t_hi <= p.end
        if k > 0:  # HF "perplexity of fixed-length models": later targets see at least L - S tokens
            assert p.t_lo - p.start >= L - S


class CharTokenizer:
    """A fast-tokenizer stand-in: one token per character, ids = code points, with offsets."""

    is_fast = True
    bos_token_id = eos_token_id = 0

    def __call__(self, text, add_special_tokens=False, return_offsets_mapping=False):
        out = {"input_ids": [ord(c) for c in text]}
        if return_offsets_mapping:
            out["offset_mapping"] = [(i, i + 1) for i in range(len(text))]
        return out


def test_bytes_of_scored_tokens_cover_each_document_when_every_token_is_scored():
    text = " = A = \nvoilà café\n = B = \nnaïve ok\n"
    proto = Protocol(unit="document", split="wikitext_articles", context_length=4, last_logit=True,
                     align_last=True, prefix="eos")
    tokens = build_eval_tokens(text, CharTokenizer(), proto)
    docs = split_documents(text, "wikitext_articles")
    assert docs == [" = A = \nvoilà café", " = B = \nnaïve ok\n"]  # pages joined by "\n", as the HF split
    assert int(tokens.target_bytes.sum()) == sum(len(d.encode("utf-8")) for d in docs)
    assert tokens.n_targets == sum(map(len, docs))  # every character scored once (prefix gives the first its context)
    assert tokens.n_words == 10  # "=", "A", "=", "voilà", "café", "=", "B", "=", "naïve", "ok"


def test_stream_protocol_respects_max_tokens_and_joiner():
    text = "ab\ncd\n"
    proto = resolve_protocol("gptq", {"context_length": 3, "max_tokens": 6})
    tokens = build_eval_tokens(text, CharTokenizer(), proto)
    # rows 'ab\n', 'cd\n' joined by '\n\n' -> 'ab\n\n\ncd\n' (8 chars), capped at 6 -> 2 full windows of 3
    assert [w[0].tolist() for w in tokens.windows] == [[97, 98, 10], [10, 10, 99]]
    assert tokens.targets.tolist() == [98, 10, 10, 99]


def test_wikitext_detokenizer_rules():
    assert wikitext_detokenize("1 @,@ 000 years @-@ old , he said . ( yes )") == "1,000 years-old, he said. (yes)"


def test_protocol_hash_ignores_batch_size_but_not_windowing():
    a = Protocol(context_length=64)
    assert a.hash() == Protocol(context_length=64, batch_size=2).hash()
    assert a.hash() == Protocol(context_length=64, stride=64).hash()
    assert a.hash() != Protocol(context_length=64, stride=32).hash()
    assert a.hash() != Protocol(context_length=64, prefix="bos").hash()


def test_model_max_length_resolves_as_lm_eval_does():
    from types import SimpleNamespace

    resolve_max_length = pytest.importorskip("lm_eval.models.utils").resolve_max_length

    from qsens.metrics.windows import model_max_length

    cases = [(SimpleNamespace(n_positions=1024, max_position_embeddings=2048), SimpleNamespace(model_max_length=10)),
             (SimpleNamespace(max_position_embeddings=128), SimpleNamespace(model_max_length=int(1e30))),
             (SimpleNamespace(text_config=SimpleNamespace(n_ctx=77)), SimpleNamespace(model_max_length=5)),
             (SimpleNamespace(), SimpleNamespace(model_max_length=4096)),
             (SimpleNamespace(), SimpleNamespace(model_max_length=int(1e30)))]
    for config, tok in cases:
        assert model_max_length(config, tok) == resolve_max_length(config, tok, default=2048)


def test_lm_eval_prefix_is_bos_else_eos_and_context_is_the_models():
    class NoBos(CharTokenizer):
        bos_token_id = None
        eos_token_id = 3

    proto = resolve_protocol("lm-eval", {})
    text = " = A = \nabcdefghij"
    with pytest.raises(ValueError, match="maximum length"):
        build_eval_tokens(text, CharTokenizer(), proto)
    tokens = build_eval_tokens(text, NoBos(), proto, model_max_length=4)
    assert tokens.windows[0][0].tolist()[0] == 3  # EOS when there is no BOS (lm-eval HFLM.prefix_token_id)
    assert max(len(w[0]) for w in tokens.windows) == 4
    assert tokens.n_targets == len(wikitext_detokenize(text))  # every token of the detokenized page scored
    # words and bytes of the source page (lm-eval process_results): re.split gives '', '=', 'A', '=', 'abcdefghij'
    assert tokens.n_words == 5 and int(tokens.target_bytes.sum()) == len(text)
