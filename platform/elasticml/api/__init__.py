"""The elasticml API server: the scheduler's declared door (scheduler/requests.py) as a REST API.

Tenants reach the platform with their own `eml1.` credential over HTTP; the server is the only
tenant-facing process that holds the Ray token, and the door checks every caller's credential,
role and ownership exactly as it does for a Ray client. `wire.py` is the JSON form of every
request and answer, `server.py` the HTTP service, `transport.py` the client side (a
`SchedulerClient` over HTTP: the same methods, the same answers).
"""
