"""Load tests for deltaserve (locust); they speak HTTP only (see locustfile.py)."""
