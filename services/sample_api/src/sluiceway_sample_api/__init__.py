"""A sample upstream for sluiceway: a real HTTP server answering ``GET /users/{key}`` with a
user computed from the key alone, so anyone can tell what it served for a key. It can be told
to answer a deterministic share of keys with 404, a random share of requests with 503, and to
be slow. The demo behind ``make run`` drives the whole pipeline against it."""
