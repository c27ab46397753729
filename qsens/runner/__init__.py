"""Run a suite: plan its cells, compute each checkpoint's pending cells, write every row as it finishes.

    plan.py        every (checkpoint × quantizer × eval) cell and its key
    checkpoint.py  one loaded checkpoint: model, tokenizer, eval tokens, calibration, resident-model budget
    worker.py      one checkpoint's cells: quantize, score against a shared fp pass, emit rows
"""
