"""What the platform shows people: Grafana dashboards over its Prometheus metrics, and the scrape config."""
