"""Evaluation shared by the three families: log-likelihoods, sample metrics, figures."""
