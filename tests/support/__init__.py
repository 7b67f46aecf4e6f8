"""Tooling shared by the tests and the benchmarks (scripts/bench_*.py), not test cases:
the SSE client (sse.py), the process harness (procs.py), private servers (servers.py),
the loopback OpenAI upstream (openai_server.py), a publisher process (publisher.py).

One home for both, so a bench measures through the same client and starts processes
the same way the tests check them; the scripts put the repository root on sys.path,
as they do to import app/ and core/.
"""
