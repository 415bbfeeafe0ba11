"""aurora_rl.runtime: what runs a served model -- the engine (Engine.step: one batched
speculative step for 1..N live requests; the server and the train loop both drive it), its request
types, the OpenAI-compatible HTTP API, metrics and the snapshot follower. The command that starts a
server is ``python -m aurora_rl.serve`` (aurora_rl/serve/)."""
