"""The core every room shares: typed config, user errors, the workspace, the run store, locks, liveness, progress."""
