"""The server's Prometheus metrics, in a registry of its own (GET /metrics)."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

disable_created_metrics()  # the *_created series only double what a scraper already knows

# seconds: from a cached tiny-model answer to a long review on a busy CPU
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
TOKEN_BUCKETS = (16, 64, 256, 1024, 4096, 16384, 65536)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "zh_sentiment_requests", "HTTP requests by endpoint and status code", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "zh_sentiment_request_duration_seconds",
            "Time from the request's arrival to its answer, by endpoint",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "zh_sentiment_predict_requests_in_flight", "POST /predict requests being served", registry=r
        )
        self.queue_depth = Gauge(
            "zh_sentiment_queue_depth", "Texts queued for the next batches (not yet being scored)", registry=r
        )
        self.inputs = Counter("zh_sentiment_inputs", "Texts classified", registry=r)
        self.disconnects = Counter(
            "zh_sentiment_client_disconnects", "POST /predict requests whose client left before the answer", registry=r
        )
        self.batch_size = Histogram(
            "zh_sentiment_batch_size", "Texts per batch scored together", buckets=SIZE_BUCKETS, registry=r
        )
        self.batch_tokens = Histogram(
            "zh_sentiment_batch_tokens", "Tokens per batch scored together", buckets=TOKEN_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "zh_sentiment_batch_duration_seconds", "Time to score one batch", buckets=LATENCY_BUCKETS, registry=r
        )

    def record_batch(self, inputs: int, tokens: int, seconds: float) -> None:
        self.inputs.inc(inputs)
        self.batch_size.observe(inputs)
        self.batch_tokens.observe(tokens)
        self.batch_seconds.observe(seconds)
