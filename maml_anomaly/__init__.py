"""maml-anomaly: find anomalies in very many time series with meta-learned forecasters."""

__version__ = "0.1.0"
