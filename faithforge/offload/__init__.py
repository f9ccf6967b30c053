"""Running a stage on another machine: the offload dispatch (plain Python) and the verified storage copy."""
