"""Structured JSON logs for web and worker: one JSON object a line, with the request id
(web) or the RQ job id (worker) of the work in progress, and query strings redacted.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson
from rq import get_current_job

from core import settings

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)
_SECRET_PARAMS = {"token", "access_token", "jwt"}
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message"}


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        job = get_current_job()  # a ContextVar read: set while an RQ job runs
        if job is not None:
            entry["job_id"] = job.id
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level: str | None = None) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level or settings.LOG_LEVEL)
    # The security log (blocked prompts, auth floods) can go to its own file so it
    # can be shipped and retained apart from the general log.
    security = logging.getLogger("herald.security")
    if settings.SECURITY_LOG_FILE and not security.handlers:
        file_handler = logging.FileHandler(settings.SECURITY_LOG_FILE)
        file_handler.setFormatter(JSONFormatter())
        security.addHandler(file_handler)


def redact_query(query: str) -> str:
    if not query:
        return ""
    pairs = [
        (k, "[redacted]" if k.lower() in _SECRET_PARAMS else v)
        for k, v in parse_qsl(query, keep_blank_values=True)
    ]
    return urlencode(pairs)
