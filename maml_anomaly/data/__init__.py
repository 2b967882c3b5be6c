"""Data in and out: reading and validating long-format parquet, the panel, schemas, atomic writers."""
