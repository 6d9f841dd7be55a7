"""Jobs: `queue` (create, enqueue, cancel, retry: what the admin calls), `registry` (which
operation runs for a kind), `runner` (claim, lock, run, record, end: what the worker calls).

Import the submodule you need; this package imports none of them, so that importing the
queue (admin) never loads the runner and its SSH boundary.
"""
