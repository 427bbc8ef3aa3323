"""latentserve's Python client: ``from latentserve.client import Client``.

The package holds only what a user of a running service needs (httpx, NumPy, Pillow); it
imports nothing of the server (service/, models/, training/).
"""

__version__ = "0.1.0"
