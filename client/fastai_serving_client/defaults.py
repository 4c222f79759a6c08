"""Every default of predict-batch, defined once: the CLI reads them here, the table in docs/batch.md is checked against them."""

BATCH = 8  # instances per request: chip-n-scale's shape
CONCURRENCY = 8  # requests in flight
FETCHERS = 16  # images read or downloaded at once
RETRIES = 8  # tries of one request before giving up on it
BACKOFF_S = 1.0  # the first wait between tries; doubles each time
BACKOFF_MAX_S = 60.0  # the longest wait between tries
RETRY_AFTER_MAX_S = 300.0  # a server's Retry-After is obeyed up to this
TIMEOUT_S = 300.0  # one prediction request
GRPC_MAX_MESSAGE_MIB = 64  # --protocol grpc: the largest message each way (fastai-serving's own limit)
FETCH_TIMEOUT_S = 30.0  # one image download
METADATA_TIMEOUT_S = 30.0  # the model's metadata (its class names), asked once per run
DATABASE_CONNECT_TIMEOUT_S = 30  # connecting to PostgreSQL (--out postgresql://...)
GRPC_RECONNECT_BACKOFF_MS = 250  # --protocol grpc: the first wait before reconnecting to the server
GRPC_MAX_RECONNECT_BACKOFF_MS = 2000  # and the longest
STOP_CHECK_S = 0.25  # how often the runner, waiting on requests, looks whether it is asked to stop
PROGRESS_EVERY_S = 10.0  # how often a progress line is printed when not on a terminal
TABLE = "results"  # chip-n-scale's table
PROTOCOL = "rest"
SHARD = "0/1"
FAILURES_LISTED = 20  # failed keys printed at the end; all of them are recorded
