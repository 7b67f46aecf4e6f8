"""Every setting Herald reads, read once from the environment (Heroku style).

Web and worker import this same module, so they always agree. Nothing secret has a
generated default: a missing ``JWT_SECRET`` fails loudly instead of letting web and
worker disagree.
"""

from __future__ import annotations

from starlette.config import Config
from starlette.datastructures import CommaSeparatedStrings, Secret

config = Config(environ=__import__("os").environ)

# --- Processes and stores -------------------------------------------------------------
PORT = config("PORT", cast=int, default=8000)
REDIS_URL = config("REDIS_URL", default="redis://127.0.0.1:6379/0")
# Heroku Redis serves TLS (rediss://) with a self-signed certificate, so clients must
# skip verification there (Heroku Dev Center, "Connecting to Heroku Redis"); app.json
# sets REDIS_TLS_VERIFY=false. Everywhere else certificates are verified.
REDIS_TLS_VERIFY = config("REDIS_TLS_VERIFY", cast=bool, default=True)


def _tls(url: str) -> str:
    if url.startswith("rediss://") and not REDIS_TLS_VERIFY and "ssl_cert_reqs" not in url:
        url += ("&" if "?" in url else "?") + "ssl_cert_reqs=none"
    return url


REDIS_URL = _tls(REDIS_URL)
# The event bus (history streams and their announcements, core/events.py) may live on
# its own Redis, or a Redis Cluster; queues, rate limits, stream leases and caches stay
# on REDIS_URL, one primary, since RQ needs multi-key operations (docs/capacity.md).
EVENTS_REDIS_URL = _tls(config("EVENTS_REDIS_URL", default=REDIS_URL))
# true: EVENTS_REDIS_URL names any node of a Redis Cluster (>= 7.0: sharded pub/sub).
EVENTS_REDIS_CLUSTER = config("EVENTS_REDIS_CLUSTER", cast=bool, default=False)
DATABASE_URL = config("DATABASE_URL", cast=Secret, default="postgresql://127.0.0.1:5432/test")
# Every Redis key and pub/sub channel starts with this, so two deployments (or two test
# runs) can share one Redis: PUBLISH is not scoped by DB number.
REDIS_PREFIX = config("REDIS_PREFIX", default="herald")
# The web process's asyncio Redis pool: requests past this many wait (up to the
# timeout) for a free connection instead of failing.
REDIS_POOL_MAX = config("REDIS_POOL_MAX", cast=int, default=100)
REDIS_POOL_TIMEOUT_SECONDS = config("REDIS_POOL_TIMEOUT_SECONDS", cast=float, default=5.0)
DB_POOL_MIN = config("DB_POOL_MIN", cast=int, default=1)
DB_POOL_MAX = config("DB_POOL_MAX", cast=int, default=10)
DB_RECONNECT_SECONDS = config("DB_RECONNECT_SECONDS", cast=float, default=3.0)
# The cyclic garbage collector's gen-0 threshold in web and chat worker processes
# (core/collector.py); CPython's default is 700. 0 leaves CPython's.
GC_GEN0_THRESHOLD = config("GC_GEN0_THRESHOLD", cast=int, default=10_000)
LOG_LEVEL = config("LOG_LEVEL", default="INFO")
SECURITY_LOG_FILE = config("SECURITY_LOG_FILE", default="")
DEV_MODE = config("HERALD_DEV", cast=bool, default=False)

# --- Authentication (API.md "Authentication and tenancy") -----------------------------
JWT_SECRET = config("JWT_SECRET", cast=Secret, default="")
# Pinned by configuration, never read from the token header (RFC 8725 section 3.1).
JWT_ALGORITHMS = config("JWT_ALGORITHMS", cast=CommaSeparatedStrings, default="HS256")
JWT_JWKS_URL = config("JWT_JWKS_URL", default="")
JWT_AUDIENCE = config("JWT_AUDIENCE", default="")
JWT_ISSUER = config("JWT_ISSUER", default="")
JWT_LEEWAY_SECONDS = config("JWT_LEEWAY_SECONDS", cast=int, default=0)
JWT_MAX_BYTES = config("JWT_MAX_BYTES", cast=int, default=8192)
AUTH_FAILURE_LIMIT = config("AUTH_FAILURE_LIMIT", default="100/minute")
# A token living longer than this (exp - iat, or exp - now without iat) is refused, so a
# leaked long-lived token cannot outlive a key rotation by years. 0: no maximum. The
# default fits the longest token Herald mints itself (the 7-day dev token).
JWT_MAX_LIFETIME_SECONDS = config("JWT_MAX_LIFETIME_SECONDS", cast=int, default=7 * 86400)
# `sub` and `org` longer than this are refused: they key PostgreSQL b-tree indexes, whose
# entries must stay under ~2,700 bytes (PostgreSQL docs, "B-Tree Implementation").
JWT_MAX_ID_CHARS = config("JWT_MAX_ID_CHARS", cast=int, default=255)
# A member whose token lists JWT_ADMIN_ROLE in the claim JWT_ROLES_CLAIM may cancel and
# delete any upload of the org; others only their own (docs/security.md).
JWT_ROLES_CLAIM = config("JWT_ROLES_CLAIM", default="roles")
JWT_ADMIN_ROLE = config("JWT_ADMIN_ROLE", default="admin")

# --- Proxies and connections (docs/security.md) -------------------------------------------
# Proxies in front of the web process that append to X-Forwarded-For: the client is the
# entry this many places from the right (Heroku's router appends the peer it saw: 1).
# Entries further left are written by the client and never trusted. 0: no proxy.
TRUSTED_PROXY_HOPS = config("TRUSTED_PROXY_HOPS", cast=int, default=1)
# Request line plus headers; over it: 431 (RFC 6585 section 5) and the connection closes.
HTTP_MAX_HEADER_BYTES = config("HTTP_MAX_HEADER_BYTES", cast=int, default=32 * 1024)
# From a request's first byte to the end of its headers; over it: 408 and close.
HTTP_HEADER_TIMEOUT_SECONDS = config("HTTP_HEADER_TIMEOUT_SECONDS", cast=float, default=10.0)
# A body may take this long plus one second per HTTP_BODY_MIN_BYTES_PER_SECOND received
# (Apache mod_reqtimeout's body=...,MinRate=... rule): a slow drip is cut, a big upload
# over a slow link is not. Time the server itself stops reading does not count.
HTTP_BODY_TIMEOUT_SECONDS = config("HTTP_BODY_TIMEOUT_SECONDS", cast=float, default=30.0)
HTTP_BODY_MIN_BYTES_PER_SECOND = config("HTTP_BODY_MIN_BYTES_PER_SECOND", cast=int, default=500)
# Connections still sending their request headers, per process; one more gets 503 at
# once. Connections past their headers (SSE streams, uploads) are not counted.
HTTP_MAX_PENDING_REQUESTS = config("HTTP_MAX_PENDING_REQUESTS", cast=int, default=1000)
# When set, GET /metrics wants `Authorization: Bearer <METRICS_TOKEN>`.
METRICS_TOKEN = config("METRICS_TOKEN", cast=Secret, default="")

# --- Event streams (API.md "Event streams") -------------------------------------------
SSE_HEARTBEAT_SECONDS = config("SSE_HEARTBEAT_SECONDS", cast=float, default=15.0)
SSE_RETRY_MS = config("SSE_RETRY_MS", cast=int, default=2000)
SSE_MAX_CONNECTIONS_PER_USER = config("SSE_MAX_CONNECTIONS_PER_USER", cast=int, default=5)
SSE_QUEUE_SIZE = config("SSE_QUEUE_SIZE", cast=int, default=1000)
# A stream's slot lapses this long after its web process stops renewing it (crash).
SSE_LEASE_SECONDS = config("SSE_LEASE_SECONDS", cast=float, default=30.0)
# A write that blocks this long means the client stopped reading: drop it.
SSE_SEND_TIMEOUT_SECONDS = config("SSE_SEND_TIMEOUT_SECONDS", cast=float, default=30.0)
# The pub/sub reader PINGs after this long without a frame, and reconnects after twice
# that: a dead connection that was never closed is noticed within 2x this.
HUB_HEALTH_CHECK_SECONDS = config("HUB_HEALTH_CHECK_SECONDS", cast=float, default=5.0)
# How long a new stream waits for its subscription to be confirmed, including finding
# the node that owns its channel during a cluster failover (a 503 after that). Cluster
# deployments: above cluster-node-timeout plus a few seconds for the promotion.
HUB_SUBSCRIBE_TIMEOUT_SECONDS = config("HUB_SUBSCRIBE_TIMEOUT_SECONDS", cast=float, default=10.0)
EVENT_HISTORY_MAX = config("EVENT_HISTORY_MAX", cast=int, default=1000)
EVENT_HISTORY_TTL_SECONDS = config("EVENT_HISTORY_TTL_SECONDS", cast=int, default=86400)

# --- Chat (API.md "Chat") ---------------------------------------------------------------
CHAT_MAX_CHARS = config("CHAT_MAX_CHARS", cast=int, default=5000)
CHAT_RATE_LIMIT = config("CHAT_RATE_LIMIT", default="50/hour")
CHAT_MAX_SYMBOL_RATIO = config("CHAT_MAX_SYMBOL_RATIO", cast=float, default=0.30)
CHAT_HISTORY_CACHE_SECONDS = config("CHAT_HISTORY_CACHE_SECONDS", cast=int, default=30)
CHAT_JOB_TIMEOUT_SECONDS = config("CHAT_JOB_TIMEOUT_SECONDS", cast=int, default=300)
GUARD_THRESHOLD = config("GUARD_THRESHOLD", cast=float, default=0.5)
# "block" refuses a message the prompt-injection guard flags; "flag" lets the reply proceed,
# marks the message (status "flagged") and logs it (docs/guard.md "Product behaviour").
GUARD_MODE = config("GUARD_MODE", default="block")
if GUARD_MODE not in ("block", "flag"):
    raise ValueError(f"GUARD_MODE must be 'block' or 'flag', not {GUARD_MODE!r}")
# Words whose learned weights the guard keeps per worker process before starting afresh
# (docs/guard.md "Cost"): bounds memory whatever is sent.
GUARD_CACHE_WORDS = config("GUARD_CACHE_WORDS", cast=int, default=100_000)
CHAT_CONVERSATIONS_PAGE_MAX = config("CHAT_CONVERSATIONS_PAGE_MAX", cast=int, default=100)
CHAT_HISTORY_MAX_MESSAGES = config("CHAT_HISTORY_MAX_MESSAGES", cast=int, default=1000)
# Earlier turns sent to the model with each message (the checkpointer keeps them all).
CHAT_CONTEXT_MESSAGES = config("CHAT_CONTEXT_MESSAGES", cast=int, default=20)
CHAT_JOB_RETRIES = config("CHAT_JOB_RETRIES", cast=int, default=1)
CHAT_SYSTEM_PROMPT = config(
    "CHAT_SYSTEM_PROMPT", default="You are Herald, a concise and helpful assistant."
)

# --- LLM provider and circuit breaker -----------------------------------------------------
LLM_PROVIDER = config("LLM_PROVIDER", default="demo")  # "demo" (offline) or "openai"
LLM_BASE_URL = config("LLM_BASE_URL", default="https://api.openai.com/v1")
LLM_API_KEY = config("LLM_API_KEY", cast=Secret, default="")
# The offline demo provider's model name, and LLM_MODEL's default: one name for the
# demo in chat.done, metrics labels and the circuit breaker. No spaces or commas: it
# is also a metric label value and a model id clients may log.
DEMO_MODEL = "herald-demo-offline"
LLM_MODEL = config("LLM_MODEL", default=DEMO_MODEL)
LLM_TIMEOUT_SECONDS = config("LLM_TIMEOUT_SECONDS", cast=float, default=60.0)
# Longest reply asked of the model (sent as max_tokens; 0: not sent, the model's own
# limit). Without it a small model may run to its whole context and hit the timeout.
LLM_MAX_TOKENS = config("LLM_MAX_TOKENS", cast=int, default=1024)
LLM_CONNECT_TIMEOUT_SECONDS = config("LLM_CONNECT_TIMEOUT_SECONDS", cast=float, default=5.0)
LLM_FIRST_TOKEN_TIMEOUT_SECONDS = config(
    "LLM_FIRST_TOKEN_TIMEOUT_SECONDS", cast=float, default=20.0
)
LLM_IDLE_TIMEOUT_SECONDS = config("LLM_IDLE_TIMEOUT_SECONDS", cast=float, default=15.0)
LLM_RETRIES = config("LLM_RETRIES", cast=int, default=2)
LLM_RETRY_BACKOFF_SECONDS = config("LLM_RETRY_BACKOFF_SECONDS", cast=float, default=0.5)
LLM_BREAKER_FAILURES = config("LLM_BREAKER_FAILURES", cast=int, default=5)
LLM_BREAKER_RESET_SECONDS = config("LLM_BREAKER_RESET_SECONDS", cast=float, default=60.0)
DEMO_WORD_DELAY_SECONDS = config("DEMO_WORD_DELAY_SECONDS", cast=float, default=0.02)

# --- CSV uploads (API.md "CSV uploads") -------------------------------------------------
UPLOAD_MAX_BYTES = config("UPLOAD_MAX_BYTES", cast=int, default=100 * 1024 * 1024)
UPLOAD_CHUNK_BYTES = config("UPLOAD_CHUNK_BYTES", cast=int, default=1024 * 1024)
UPLOAD_RATE_LIMIT = config("UPLOAD_RATE_LIMIT", default="20/hour")
UPLOAD_JOB_TIMEOUT_SECONDS = config("UPLOAD_JOB_TIMEOUT_SECONDS", cast=int, default=3600)
# Types are first guessed from up to this many rows of the first MiB, then checked on every row.
UPLOAD_SAMPLE_ROWS = config("UPLOAD_SAMPLE_ROWS", cast=int, default=100_000)
UPLOAD_MAX_COLUMNS = config("UPLOAD_MAX_COLUMNS", cast=int, default=1600)
UPLOAD_MAX_FIELD_BYTES = config("UPLOAD_MAX_FIELD_BYTES", cast=int, default=1024 * 1024)
UPLOAD_PROGRESS_INTERVAL_SECONDS = config(
    "UPLOAD_PROGRESS_INTERVAL_SECONDS", cast=float, default=0.25
)
UPLOAD_JOB_RETRIES = config("UPLOAD_JOB_RETRIES", cast=int, default=3)
# PostgreSQL work_mem for the profile's sorts, per import transaction (SET LOCAL).
UPLOAD_PROFILE_WORK_MEM = config("UPLOAD_PROFILE_WORK_MEM", default="64MB")
# Past 100,000 rows, distinct counts of typed columns are ANALYZE's estimates from a sample of
# 300 x this many rows (PostgreSQL's default_statistics_target, SET LOCAL; its default 100).
UPLOAD_PROFILE_STATISTICS_TARGET = config("UPLOAD_PROFILE_STATISTICS_TARGET", cast=int, default=30)
# Past 100,000 rows the profile's aggregate scan is grouped by the text columns of few values
# while their estimated combinations stay within this (each group holds every column's state).
UPLOAD_PROFILE_MAX_GROUPS = config("UPLOAD_PROFILE_MAX_GROUPS", cast=int, default=1000)
UPLOAD_ROWS_PAGE_MAX = config("UPLOAD_ROWS_PAGE_MAX", cast=int, default=1000)
# Rows parsed per COPY batch; cancel is checked between batches (memory ~ batch size).
UPLOAD_BATCH_ROWS = config("UPLOAD_BATCH_ROWS", cast=int, default=5000)
# The import looks for a cancel at most this often (<= 0: after every batch).
UPLOAD_CANCEL_CHECK_SECONDS = config("UPLOAD_CANCEL_CHECK_SECONDS", cast=float, default=0.2)
# A re-run waits this long for a still-running (or just-killed) run of the same upload.
UPLOAD_LOCK_WAIT_SECONDS = config("UPLOAD_LOCK_WAIT_SECONDS", cast=float, default=30.0)
# An upload whose body stopped arriving this long ago (its web process died mid-body) is
# deleted with its chunks by the reconciler.
UPLOAD_RECEIVE_TIMEOUT_SECONDS = config("UPLOAD_RECEIVE_TIMEOUT_SECONDS", cast=float, default=600.0)

# --- Queues ---------------------------------------------------------------------------------
CHAT_QUEUE = config("CHAT_QUEUE", default="chat")
UPLOAD_QUEUE = config("UPLOAD_QUEUE", default="uploads")
WORKER_CHAT_PROCESSES = config("WORKER_CHAT_PROCESSES", cast=int, default=2)
WORKER_UPLOAD_PROCESSES = config("WORKER_UPLOAD_PROCESSES", cast=int, default=1)
# RQ registry maintenance (abandoned jobs of a crashed machine); RQ's default is 600 s.
WORKER_MAINTENANCE_SECONDS = config("WORKER_MAINTENANCE_SECONDS", cast=int, default=60)
# What a dead worker left running (RQ's scheduler, a work horse) gets this long after
# SIGTERM before SIGKILL (jobs/worker/orphans.py); the scheduler needs about its 1 s tick.
WORKER_ORPHAN_GRACE_SECONDS = config("WORKER_ORPHAN_GRACE_SECONDS", cast=float, default=3.0)

# --- Chat workers (jobs/worker/asyncworker.py) ---------------------------------------------
# Replies in flight at once per chat worker process (one event loop); a full worker
# stops dequeuing, so the next message goes to a worker with room.
CHAT_WORKER_CONCURRENCY = config("CHAT_WORKER_CONCURRENCY", cast=int, default=200)
# Jobs a chat worker with free slots takes from the queue per round (three Redis round
# trips for the batch instead of six or seven per job).
CHAT_WORKER_DEQUEUE_BATCH = config("CHAT_WORKER_DEQUEUE_BATCH", cast=int, default=20)
# Replies in flight at once per user across all workers (RQ RateLimit); more wait queued.
CHAT_USER_CONCURRENCY = config("CHAT_USER_CONCURRENCY", cast=int, default=3)
# On SIGTERM, replies get this long to finish before they are handed back to the queue
# (Heroku sends SIGKILL 30 s after SIGTERM).
CHAT_WORKER_GRACE_SECONDS = config("CHAT_WORKER_GRACE_SECONDS", cast=float, default=20.0)
# Reply pieces arriving within this long of the last chat.chunk leave as one event.
CHAT_CHUNK_COALESCE_SECONDS = config("CHAT_CHUNK_COALESCE_SECONDS", cast=float, default=0.02)
# Concurrent upstream requests per chat worker process (provider rate limits).
LLM_MAX_CONCURRENCY = config("LLM_MAX_CONCURRENCY", cast=int, default=200)
# The event-loop lag probe of each chat worker (jobs/worker/looplag.py): how often it
# wakes (0: off) and how often it adds its samples to the shared histogram.
WORKER_LOOP_LAG_TICK_SECONDS = config("WORKER_LOOP_LAG_TICK_SECONDS", cast=float, default=0.1)
WORKER_LOOP_LAG_REPORT_SECONDS = config("WORKER_LOOP_LAG_REPORT_SECONDS", cast=float, default=10.0)
# PostgreSQL connections per chat worker process; replies borrow one per statement.
CHAT_DB_POOL_MAX = config("CHAT_DB_POOL_MAX", cast=int, default=10)
CHAT_DB_POOL_TIMEOUT_SECONDS = config("CHAT_DB_POOL_TIMEOUT_SECONDS", cast=float, default=30.0)

# --- Reconciliation (docs/design.md "Reconciliation") -------------------------------------------
# PostgreSQL is the record of work: every this often the one leading reconciler (across all
# worker machines) enqueues again the work whose RQ job is gone, ended, or on a dead worker.
RECONCILE_INTERVAL_SECONDS = config("RECONCILE_INTERVAL_SECONDS", cast=float, default=5.0)
# Work younger than this is left alone: the web process may be between its INSERT and its
# enqueue.
RECONCILE_GRACE_SECONDS = config("RECONCILE_GRACE_SECONDS", cast=float, default=5.0)
# Enqueues by the reconciler per message or upload before it gives up with `work_lost`.
RECONCILE_MAX_ATTEMPTS = config("RECONCILE_MAX_ATTEMPTS", cast=int, default=3)
# Rows of each kind looked at per pass (oldest first); the rest wait for the next pass.
RECONCILE_BATCH = config("RECONCILE_BATCH", cast=int, default=1000)
# A supervisor vouches for its live worker processes in Redis with keys of this TTL,
# renewed every third of it; a worker whose key lapsed (its machine died) is dead.
WORKER_LIVENESS_SECONDS = config("WORKER_LIVENESS_SECONDS", cast=float, default=10.0)
