"""Headers for the project's own HTTP calls to the Prefect API. With the server's API auth
string enabled (`PREFECT_SERVER_API_AUTH_STRING`), clients set `PREFECT_API_AUTH_STRING` to
the same value and send it as HTTP Basic credentials, as Prefect's own client does."""

from __future__ import annotations

import base64
import os


def auth_headers() -> dict[str, str]:
    secret = os.environ.get("PREFECT_API_AUTH_STRING")
    if not secret:
        return {}
    return {"Authorization": "Basic " + base64.b64encode(secret.encode()).decode()}
