"""Run a suite: plan its cells, compute each checkpoint's pending cells, write every row as it finishes.

    loop.py        run_suite: plan, skip what is done, claim and record; jobs go to an executor (qsens.executors)
    plan.py        every (checkpoint × quantizer × eval) cell and its key
    checkpoint.py  one loaded checkpoint: model, tokenizer, eval tokens, calibration, resident-model budget
    worker.py      one checkpoint's cells: quantize, score against a shared fp pass, report rows (CheckpointWorker)
    summary.py     the end-of-run table and counts
"""
