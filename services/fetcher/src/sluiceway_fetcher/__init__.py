"""The sluiceway fetcher: takes one fetch task per key, GETs the key's URL from the upstream
under the pipeline's rate limit, and publishes the record; a key that cannot be fetched goes to
the pipeline's failed set in Redis. A task is acked only once its outcome is safe elsewhere."""
