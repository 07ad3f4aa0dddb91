"""Plain clients for the outside world. No Prefect imports here: each client is usable and testable alone."""

import logging

# httpx logs every request URL at INFO; a Slack webhook URL is a secret, so keep that quiet.
logging.getLogger("httpx").setLevel(logging.WARNING)
logging.getLogger("httpcore").setLevel(logging.WARNING)
