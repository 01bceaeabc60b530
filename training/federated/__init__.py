"""Federated fine-tuning of HPVFG + KVFA with Flower (issue 5)."""
