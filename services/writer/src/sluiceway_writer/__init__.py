"""The sluiceway writer: consumes records, gathers them into batches, lands each batch in
PostgreSQL in one transaction (COPY into a staging table, then an idempotent upsert) and acks
the batch only after the commit."""
