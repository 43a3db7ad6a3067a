"""Router settings, from `INTERLOCK_ROUTER_*` environment variables."""

from __future__ import annotations

from dataclasses import dataclass

from interlock._settings import load_settings


@dataclass(frozen=True)
class RouterSettings:
    host: str = "127.0.0.1"
    """Interface the gRPC server binds."""
    port: int = 50051
    """gRPC port callers use; 0 picks a free one."""
    reload_interval_s: float = 1.0
    """How often the routing file (or ConfigMap directory) is checked for a new version."""
    routing_path: str = ""
    """Routing YAML, or a directory holding `routing.yaml` (a mounted ConfigMap); watched and
    hot-swapped. Empty: the default models, on real providers whose keys are set, else on fakes."""
    price_overrides_path: str = ""
    """YAML of custom prices for private models: {models: {NAME: {input_per_mtok, output_per_mtok, ...}}}."""
    fake_provider_url: str = "http://127.0.0.1:8089"
    """Root URL of the built-in fake providers (a trailing `/v1` is ignored), used when no
    routing config is given for providers whose API key is not in the environment."""
    http_host: str = "127.0.0.1"
    """Interface of the OpenAI/Anthropic-compatible HTTP facade."""
    http_port: int = 8080
    """Port of the HTTP facade; 0 picks a free one, -1 turns the facade off."""
    loop_grpc_port: int = -1
    """A second gRPC port serving RouterService on the event-loop transport
    (interlock._grpc_loop: no hand-offs between gRPC core's poller thread and the event loop,
    so less latency and CPU a call; no TLS, health or reflection there, which stay on `port`).
    0 picks a free one; -1, the default, turns it off."""
    ratelimit_target: str = "127.0.0.1:50052"
    """Rate-limiter gRPC address."""
    ratelimit_fail_open: bool = True
    """Default for rules the router has not yet seen a failure_mode for: admit calls when the
    rate-limiter is unreachable. Each rule's own failure_mode (limits file) wins once seen."""
    ratelimit_timeout_s: float = 0.5
    """Longest wait for a rate-limit decision (capped by the caller's deadline) before the
    rules' failure modes apply."""
    ratelimit_lease_ms: int = 0
    """Rate-limit leases: admit most calls from blocks of hits the rate-limiter granted for
    this long (it may grant less: at most a twentieth of the shortest window), asked for in
    the background, so a call makes no round trip to the limiter. Limits stay exact across
    replicas (a lease's hits count from its grant to a window after its end); the limiter
    grants leases only below a share of each limit, the rest is decided per call. Unspent
    hits are given back when the lease ends, so a replica holds them up to this long. 0:
    every call is decided by the rate-limiter."""
    ratelimit_lease_max_requests: int = 256
    """Most requests one lease holds (it is sized for twice the calls expected in it)."""
    budget_target: str = "127.0.0.1:50053"
    """Budget service gRPC address. Budgets always fail closed."""
    budget_lease_usd: float = 0.0
    """Budget leases: what the router asks of a lease beyond the call that needs it, in USD.
    0 turns leases off (every call makes an exact reservation on the budget service). With
    leases most calls reserve in memory and skip a round trip; budgets stay hard because a
    lease's hold counts as reserved spend on the budget service."""
    commit_after_answer: bool = False
    """Answer the caller before the budget service has the call's commit, saving that round
    trip (a ledger transaction) on every call. Budgets stay hard: the reservation (or lease
    hold) keeps the call's worst case until the commit lands. The commit is retried in the
    background for up to `background_commit_s` and sent before the router stops; GetSpend and
    budget alerts see the call a moment after the caller has its answer."""
    background_commit_s: float = 120.0
    """How long a commit sent after the answer is retried while the budget service is unreachable."""
    background_commit_linger_s: float = 0.05
    """How long a commit sent after the answer waits for others to share its batch (one round
    trip, one ledger transaction). Longer batches more at low rates; spend and alerts see the
    call that much later, and the hold keeps its worst case meanwhile."""
    budget_lease_ttl_s: float = 30.0
    """Life of a lease not renewed (the router died); the router renews leases in use."""
    budget_lease_idle_s: float = 30.0
    """An unused lease with no call in flight is given back after this long (as long as a
    dead router's lease is held): calls that come in bursts find it still open, where a new
    one would make the burst's first calls wait for a round trip to the budget service."""
    max_in_flight: int = 1024
    """Calls (streams included) one router serves at once; past it new calls get UNAVAILABLE
    (HTTP 503) with a retry hint at once instead of queueing. 0: no cap."""
    max_loop_lag_s: float = 0.1
    """Shed new calls while the event loop stays this far behind (three 50 ms ticks in a row
    each later than this): the router is short of CPU and a queued call would only wait. 0: off."""
    auth_cache_ttl_s: float = 30.0
    """How long a valid API key is trusted without asking the budget service again. A key in
    use is asked about again in the background in the last third of that time, so its calls
    do not wait for the check; a revoked key stops working within this time."""
    otlp_endpoint: str = ""
    """OTLP/gRPC endpoint for spans; empty disables export."""
    log_level: str = "info"
    """Log level of the JSON logs on stderr."""
    nice: int = 0
    """Scheduling niceness (-20 to 19) the process sets at start; 0 leaves it alone. On a host
    shared with the router, a higher one than the router's lets calls take the CPU first."""
    cpus: str = ""
    """CPUs the router's threads are bound to, in Linux's list format (`1`, `0-3`, `0,2-3`);
    empty, the default, leaves placement to the kernel. One CPU keeps gRPC core's poller and
    the event loop on the same CPU, so the hand-offs of each gRPC call between them need no
    idle CPU woken (interlock._server.set_cpu_affinity); give CPUs the router does not share
    with much else."""
    grace_s: float = 30.0
    """Time in-flight calls (streams too) get to finish after SIGTERM."""
    redact_patterns: str = ""
    """Recorded bodies of agent runs: a JSON array of regular expressions whose matches are
    replaced by `[REDACTED]` before the body leaves the router, e.g. `["[\\w.+-]+@[\\w-]+(?:\\.[\\w-]+)+"]`.
    Provider keys, Interlock keys and bearer credentials are always redacted."""
    redact_fields: str = ""
    """Recorded bodies: comma-separated JSON field names (case-insensitive) whose values are
    replaced wherever they appear (tool arguments, tool results and contents that are JSON)."""


def load() -> RouterSettings:
    return load_settings(RouterSettings, "INTERLOCK_ROUTER_")
