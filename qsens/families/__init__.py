"""Checkpoints to measure: what one is (`checkpoint.py`), the manifest of a trained family (`manifest.py`), and
loading a model and tokenizer from a local folder or a hub revision (`loading.py`). Training lives in testbed/."""
