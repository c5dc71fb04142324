"""Evaluation: kNN, linear probe and fine-tuning on a pretrained encoder."""
