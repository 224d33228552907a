"""Loaded by every Python that tests/test_readme.py starts (this folder leads its PYTHONPATH).

With ``XPNET_README_EPOCHS=N`` set, every training run of the command line trains at most N
epochs: README's commands run as written, only shorter. Nothing else changes.
"""

import os

if os.environ.get("XPNET_README_EPOCHS"):
    import functools

    import xpnet.run

    _cap = int(os.environ["XPNET_README_EPOCHS"])
    _run_training = xpnet.run.run_training

    @functools.wraps(_run_training)
    def _shortened(settings, **options):
        return _run_training({**settings, "epochs": min(_cap, settings.get("epochs") or _cap)}, **options)

    xpnet.run.run_training = _shortened
