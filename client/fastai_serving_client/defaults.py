"""Every default of predict-batch, defined once: the CLI reads them here, the table in docs/batch.md is checked against them."""

BATCH = 8  # instances per request: chip-n-scale's shape
MIN_CONCURRENCY = 1  # requests in flight, the adaptive controller's lower bound: where it starts
MAX_CONCURRENCY = 128  # and its upper bound: several GPU replicas' worth; images held ahead are 2 x batch x limit
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
MOSAIC_NODATA = 255  # a .tif mosaic's nodata value (pixels no window has filled yet); class indices are 0 to 254
POLYGON_CHUNK = 5000  # --polygons: features written at a time
WINDOW_OVERLAP = 0  # --overlap: pixels two neighbouring scene windows share
POLYGON_SIMPLIFY = 0.0  # --simplify: tolerance in the CRS's units (0: the pixels' own edges)
POLYGON_MIN_AREA = 0.0  # --min-area: smaller polygons are dropped, in the CRS's square units
POLYGON_BACKGROUND = "0"  # --background: the class --polygons leaves out (fastai's first code: often background)
TILE_PIXELS = 256  # --area with a .tif mosaic: each tile's pixels in it, unless --window says otherwise
GDAL_CACHE_MB = 64  # GDAL's block cache in predict-batch (GDAL's own default: 5% of the machine's memory)
MOSAIC_MAX_PIXELS = (
    4 * 2**30
)  # a .tif mosaic's largest size: its raw file (one byte a pixel) is made whole at the start
