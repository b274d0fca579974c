"""TensorRT: engines and their runtime, the CUDA runtime, version differences, benchmarks and
optimization-profile planning."""
