"""A simulated world for `make up`, drills and tests: Kubernetes, GitHub, Slack and demo services."""
