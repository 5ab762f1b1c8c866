"""`make bench`: every performance figure of gpuqueue beside a ceiling measured in the same run.

Each figure family is one module (positions, enqueue, dispatch, worker, peer, http, websocket,
diffusers); `python -m bench [family ...]` runs them and prints one table (bench/README.md).
"""
