"""The studio past one GPU: its engine as a Ray Serve deployment (`replica`, `deploy`), the studio as its front
(`client`), and what crosses between them (`wire`). Only `python app.py --engine ray` and `python -m studio.serve`
import this package's Ray parts; the single-process studio never does.
"""

import os

# Read by Ray when it is imported, so set before any module here imports it: loopback stays loopback (without it,
# Ray swaps 127.0.0.1 for the machine's external interface), and Ray 2.60 heads require their token
# (~/.ray/auth_token), which a driver sends only in token mode.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token"}
for _name, _value in LOOPBACK_ENV.items():
    os.environ.setdefault(_name, _value)
