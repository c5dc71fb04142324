"""ssl-runner: self-supervised pretraining on images, chained into kNN, linear
and fine-tuning evaluation, in one run folder. Entry point: `python -m ssl_runner`."""

__version__ = "0.1.0"
