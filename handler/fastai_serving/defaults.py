"""Every default of fastai-serving, defined once: ports, limits, timeouts, batching.

The settings classes (the handler's, make-archive's, the shim's, serve's flags) take their
defaults from here; `config.properties` and the tables of docs/settings.md are checked against these
values by the tests. Imports nothing, so any part can read it.
"""

MIB = 1024 * 1024

# --- Addresses ----------------------------------------------------------------------------------
LOOPBACK = "127.0.0.1"
SHIM_HOST = "0.0.0.0"  # the only address that faces users
SHIM_PORT = 8501  # TF Serving's REST port
GRPC_PORT = 8500  # TF Serving's gRPC port: the shim's gRPC front, on the shim's address
INFERENCE_PORT = 8080  # TorchServe's inference API, loopback
MANAGEMENT_PORT = 8081  # TorchServe's management API, loopback only
METRICS_PORT = 8082  # TorchServe's metrics API, loopback only
TORCHSERVE_GRPC_PORTS = (7070, 7071)  # TorchServe's own gRPC APIs (inference, management), loopback

# --- Limits -------------------------------------------------------------------------------------
MAX_BODY_BYTES = 64 * MIB  # a request or response body, at the shim and at TorchServe
MAX_INSTANCES = 1024  # instances one request may carry
MAX_IMAGE_PIXELS = 64 * MIB  # width × height of one decoded image: an 8192×8192 tile
MAX_TEXT_CHARS = 10_000  # characters in one text instance (text Learners); more is a 400

# --- Timeouts -----------------------------------------------------------------------------------
RESPONSE_TIMEOUT_S = 120  # TorchServe restarts a worker whose batch takes longer
STARTUP_TIMEOUT_S = 600  # TorchServe restarts a worker that loads (and, with --compile, compiles) for longer
PREDICT_TIMEOUT_S = 120.0  # the shim's deadline for one prediction, then 504
STATUS_TIMEOUT_S = 2.0  # the shim's status and management calls, then 503
RETRY_AFTER_WORKER_DEATH_S = 60.0  # after a worker death, how long the shim waits for its restart
DRAIN_S = 3.0  # after SIGTERM: readiness fails at once, requests are still served this long, then the shim stops
GRACEFUL_TIMEOUT_S = 30  # then requests already accepted get this long to be answered before the shim exits
CONNECT_TIMEOUT_S = 2.0  # the fronts' and tools' connects to TorchServe (loopback)
ROUTING_CACHE_S = 10.0  # how long the fronts trust TorchServe's model and version table (a miss asks again at once)
METADATA_CACHE_S = 60.0  # how long the fronts keep a model's description (task, classes): asking takes a worker
METRICS_SCRAPE_TIMEOUT_S = 2.0  # GET /metrics reads TorchServe's own metrics for at most this long
GRPC_HEALTH_POLL_S = 2.0  # how often the gRPC front's health service asks whether every model can serve
SHIM_KEEPALIVE_S = 30  # an idle keep-alive connection to the REST front is closed after this long

# --- Load: deadlines and admission (docs/reliability.md) ------------------------------------------
MAX_QUEUE_S = 30.0  # a request without a deadline of its own is not predicted after waiting this long (make-archive)
QUEUE_TARGET_S = 0.0  # the fronts keep a model's expected wait below this, refusing beyond it; 0: two forward passes
QUEUE_TARGET_MIN_S = 1.0  # and never below this: a few clients at once are served, not refused, however fast the model
PACE_EWMA = 0.2  # how much each batch's seconds and instances move the fronts' averages of them (the pace)
QUEUE_INTERVAL_S = (
    1.0  # a queue must stand over its target this long before anything is refused for it (CoDel's interval)
)

# --- Stopping (scripts/serve on SIGTERM; the Kubernetes grace period covers the sum) -------------
FRONT_STOP_MARGIN_S = 10  # after the graceful timeout, a front still running is killed this much later
GRPC_STOP_QUIET_S = 0.5  # the gRPC front refuses new calls until none came this long, then stops grpc's server
TORCHSERVE_STOP_S = 30  # then TorchServe gets this long to stop its workers before it is killed
PRESTOP_S = 5  # Kubernetes' preStop sleep before SIGTERM, so endpoints drop the pod first (deploy/kubernetes)


def shutdown_budget_s() -> float:
    """The longest `serve` takes from SIGTERM to exit (preStop included): the pod's grace period covers it."""
    return PRESTOP_S + DRAIN_S + GRACEFUL_TIMEOUT_S + FRONT_STOP_MARGIN_S + TORCHSERVE_STOP_S


# --- Reloading (scripts/reload) and TorchServe's management calls that change what is served -----
RELOAD_READY_TIMEOUT_S = 180.0  # how long a new version may take to get a ready worker, else it is unregistered
RELOAD_DRAIN_S = 10.0  # how long requests already sent to the old version get before it is retired
MANAGEMENT_TIMEOUT_S = 30.0  # reload's questions to the management API (what is registered, the default)
REGISTER_TIMEOUT_S = 60.0  # registering an archive (TorchServe unpacks it before it answers)
UNREGISTER_TIMEOUT_S = 120.0  # unregistering a version, or scaling a model: TorchServe stops workers first

# --- Batching and workers (make-archive) --------------------------------------------------------
BATCH_SIZE = 16  # client requests TorchServe gathers into one batch
MAX_BATCH_DELAY_MS = 10  # how long TorchServe waits to fill a batch
MIN_WORKERS = 1
MAX_WORKERS = 1
MAX_BATCH = (
    16  # images (or texts) per forward pass: resnet34 at 224² on 2 cores ran fastest at 8-16 (32: -12%, 64: -22%)
)
MAX_ROW_BATCH = 1024  # tabular and collaborative-filtering rows per forward pass
DECODE_THREADS = 4  # threads decoding a batch's images in each worker (PIL releases the GIL while decoding)
TORCH_THREADS = 0  # torch threads per worker; 0: the machine's cores ÷ the model's workers
# How a worker's idle torch (OpenMP) threads wait: PASSIVE sleeps at once; libgomp's default spins ~0.3 ms after
# every parallel region, which took as much CPU as a near-free model's whole batch (docs/pipeline.md). serve sets
# it for TorchServe's workers unless the environment already does.
OMP_WAIT_POLICY = "PASSIVE"
PRECISION = "fp32"
CHANNELS_LAST = True  # the model's weights channels-last: same results to float rounding, faster on CPU
COMPILE = False  # torch.compile the model at worker start (opt-in: README, "Performance")
COMPILE_MODES = ("aot", "worker")  # make-archive --compile MODE: at archive time (AOTInductor), or in each worker
COMPILE_MODE = "aot"  # what --compile alone means: starts as fast as eager and serves faster (docs/compile.md)
MODEL_VERSION = "1.0"

# --- The shim's processes -----------------------------------------------------------------------
SHIM_WORKERS = 2  # gunicorn worker processes
SHIM_THREADS = 16  # threads per gunicorn worker: concurrent requests
GRPC_THREADS = 32  # the gRPC front's threads: concurrent calls (as many as the REST shim's 2 workers × 16)

# --- Fast paths (make-archive; README, "Performance", and docs/pipeline.md) ----------------------
FAST_IMAGES = True  # build a vision batch straight from PIL images when every transform is one the fast path knows
FAST_ROWS = True  # apply a tabular or collab Learner's procs to a batch's rows vectorized, without a test_dl
# Decode and resize a vision batch as tensors on the worker's device (torchvision, torch) instead of with PIL:
# "auto" where the worker has a GPU (nvJPEG); "on" on a CPU too (answers within a measured bound of PIL's).
TENSOR_IMAGES_CHOICES = ("auto", "on", "off")
TENSOR_IMAGES = "auto"

# --- Slow and idle clients: the fronts' deadlines and caps (docs/reliability.md) -----------------
# REST: nginx reads each request whole before a shim thread sees it (scripts/nginx.conf).
HEADER_TIMEOUT_S = 10.0  # a request's line and headers must all arrive within this, else the connection is closed
BODY_TIMEOUT_S = 10.0  # a body may pause this long between two reads (an answer's reader too), else closed
KEEPALIVE_TIMEOUT_S = 75.0  # an idle keep-alive connection is closed after this; meanwhile it costs no thread
MAX_CONNECTIONS = 4096  # open connections per proxy worker (idle, slow, busy, its own to the shim); past it, closed
MAX_REQUESTS = 1024  # requests in flight on the REST front (headers read, not yet answered); past it, 503 at once
PROXY_WORKERS = 2  # nginx worker processes
HEALTH_THREADS = 4  # shim threads of their own for GET and HEAD (health, status, metadata, metrics)
# gRPC: grpc's own server limits (the gRPC front).
GRPC_RECEIVE_TIMEOUT_S = 10.0  # a call's request message must arrive within this, else DEADLINE_EXCEEDED
GRPC_MAX_CONCURRENT_RPCS = 1024  # calls in flight on the gRPC front; past it, RESOURCE_EXHAUSTED at once
GRPC_MAX_CONCURRENT_STREAMS = 100  # streams (calls) one HTTP/2 connection may have open at once
GRPC_MIN_PING_INTERVAL_S = 10.0  # keepalive enforcement: a client pinging more often gets GOAWAY (too_many_pings)
GRPC_MAX_CONNECTION_IDLE_S = 300.0  # a connection with no call for this long gets GOAWAY (clients reconnect)
GRPC_MAX_CONNECTION_AGE_S = 600.0  # every connection gets GOAWAY after this (±10 %), so clients rebalance
GRPC_MAX_CONNECTION_AGE_GRACE_S = 150.0  # then calls in flight get this long (> the predict timeout), then it closes
GRPC_KEEPALIVE_TIMEOUT_S = 20.0  # the front's own pings find dead peers: a ping unanswered this long closes it

# --- Who may call: API keys and TLS on the fronts (docs/security.md) -----------------------------
ACCESS_CHECK_S = 1.0  # the key file and the TLS files are looked at (stat) at most this often; a change is read at once
MIN_API_KEY_CHARS = 16  # a shorter key in the key file is refused: it could be guessed
METRICS_ACCESS_CHOICES = ("open", "keyed", "loopback")  # GET /metrics: anyone, API keys, or this machine only
METRICS_ACCESS = "open"  # as before keys: Prometheus scrapes without credentials
ACCESS_LOG = True  # the fronts write one JSON line per request on stdout
TLS_PROTOCOLS = "TLSv1.2 TLSv1.3"  # the REST front's (nginx) and the gRPC front's (grpc's own minimum is 1.2)
# TLS 1.2's ciphers where TLS 1.3 is not spoken: forward-secret AEADs only (Mozilla's "intermediate" profile).
TLS12_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)
