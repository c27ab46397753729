"""The checkpoint families qsens trains and ships itself, and stand-ins of real families' shapes.

    spec.py      the typed ladder spec (sizes, budgets, schedules, seeds) read from YAML
    trainer.py   model construction, LR schedules (cosine, WSD cooldowns), data order, resumable training steps
    ladder.py    `qsens family train`: the whole factorial ladder, checkpoints and manifest, resumable
    gates.py     quality gates: fp loss against n-gram baselines, fitted exponents against their tolerance
    standins.py  randomly initialised checkpoints at Pythia/OLMo-2 shapes for real-shape runs without the hub
"""
