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

# --- Stopping (scripts/serve on SIGTERM; the Kubernetes grace period covers the sum) -------------
FRONT_STOP_MARGIN_S = 10  # after the graceful timeout, a front still running is killed this much later
TORCHSERVE_STOP_S = 30  # then TorchServe gets this long to stop its workers before it is killed
PRESTOP_S = 5  # Kubernetes' preStop sleep before SIGTERM, so endpoints drop the pod first (deploy/kubernetes)


def shutdown_budget_s() -> float:
    """The longest `serve` takes from SIGTERM to exit (preStop included): the pod's grace period covers it."""
    return PRESTOP_S + DRAIN_S + GRACEFUL_TIMEOUT_S + FRONT_STOP_MARGIN_S + TORCHSERVE_STOP_S


# --- Reloading (scripts/reload) -----------------------------------------------------------------
RELOAD_READY_TIMEOUT_S = 180.0  # how long a new version may take to get a ready worker, else it is unregistered
RELOAD_DRAIN_S = 10.0  # how long requests already sent to the old version get before it is retired

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
PRECISION = "fp32"
CHANNELS_LAST = True  # the model's weights channels-last: same results to float rounding, faster on CPU
COMPILE = False  # torch.compile the model at worker start (opt-in: README, "Performance")
MODEL_VERSION = "1.0"

# --- The shim's processes -----------------------------------------------------------------------
SHIM_WORKERS = 2  # gunicorn worker processes
SHIM_THREADS = 16  # threads per gunicorn worker: concurrent requests
GRPC_THREADS = 32  # the gRPC front's threads: concurrent calls (as many as the REST shim's 2 workers × 16)
