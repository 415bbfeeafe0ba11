"""Online learning, one stack for the train CLI and the server: trace buffer, learner (sync or
async), gate, rollback monitor, live policy / snapshot store, on-policy training rounds."""
