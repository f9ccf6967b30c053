"""Measuring a real stage on CUDA and storing the GPU gate's correction factor (the gate's arithmetic is in gpu/)."""
