"""devreg: a device registry web service on FastAPI and PostgreSQL."""

__version__ = "0.1.0"
