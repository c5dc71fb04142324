"""ssl-runner: self-supervised pretraining on images, chained into kNN, linear
and fine-tuning evaluation, in one run folder. Entry point: `python -m ssl_runner`."""

__version__ = "0.1.0"

from ssl_runner import runtime as _runtime  # noqa: E402,F401  (start-up clock)
