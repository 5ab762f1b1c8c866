"""The gpuqueue command line: wires the queue, the web server and the workers together."""
