"""Everything DuckDB: the schema, the typed rows and the one outcome model, the background
writer, the importer, and the queries that `ratelimit` and `metrics` show."""
