"""Prometheus metrics of the gateway (own registry)."""

from prometheus_client import CollectorRegistry, Counter, Gauge

REGISTRY = CollectorRegistry()
REQUESTS = Counter("platebridge_gateway_requests_total", "Requests by route kind and status", ["kind", "status"],
                   registry=REGISTRY)
CACHE = Counter("platebridge_gateway_cache_total", "Segment cache lookups", ["result"], registry=REGISTRY)
PLAYLISTS = Counter("platebridge_gateway_playlist_responses_total",
                    "Playlist responses by source: the channel's newest playlist (a fresh reload or an LL-HLS "
                    "generation already answered), a fetch already running (joined) or a new upstream fetch",
                    ["source"], registry=REGISTRY)
UPSTREAM = Counter("platebridge_gateway_upstream_fetches_total", "Fetches from pods", ["kind"], registry=REGISTRY)
BYTES_OUT = Counter("platebridge_gateway_bytes_out_total", "Body bytes sent to viewers", registry=REGISTRY)
VIEWERS = Gauge("platebridge_gateway_active_viewers", "Distinct viewer sessions seen in the last 30 s",
                registry=REGISTRY)
CACHE_BYTES = Gauge("platebridge_gateway_cache_bytes", "Bytes held by the segment cache", registry=REGISTRY)
DISCOVERY_CONFLICTS = Gauge("platebridge_gateway_discovery_conflicts",
                            "pod_ids claimed by more than one tailnet device (routed to none)", registry=REGISTRY)
