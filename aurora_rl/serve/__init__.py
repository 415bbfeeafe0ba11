"""aurora_rl.serve: the serving entry points.

- ``python -m aurora_rl.serve``: the OpenAI-compatible server with online learning.
- ``python -m aurora_rl.serve.replay``: a load generator replaying a traffic stream
  against any OpenAI-compatible endpoint.
"""
