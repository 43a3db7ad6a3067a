"""`make bench` / `make soak`: Interlock against direct calls and LiteLLM's proxy, side by side.

One invocation on one machine starts a static OpenAI-format upstream (nginx), the
Interlock mesh and LiteLLM's proxy in front of it, and drives every path open-loop at
fixed rates (vegeta for HTTP, ghz for gRPC). See docs/BENCHMARKS.md for the method.

    bash bench/deps.sh                          # nginx, vegeta, ghz, LiteLLM (cached)
    python -m bench.compare --quick             # smoke run, nothing written to docs/
    python -m bench.compare                     # full run; rewrites its section of docs/BENCHMARKS.md
    python -m bench.soak --minutes 30           # steady rate, router RSS over time
"""
