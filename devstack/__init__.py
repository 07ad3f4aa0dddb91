"""Developer tooling, never imported by a production install: the local stack behind
`make up` / `make down` (stack.py). The simulated world it starts is the `sandbox` package."""
