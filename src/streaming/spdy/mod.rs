//! SPDY/3.1 as Kubernetes streaming clients speak it (server side).
