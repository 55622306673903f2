"""Learning methods: variational inference / maximum likelihood and adversarial training."""
