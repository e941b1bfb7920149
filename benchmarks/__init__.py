"""Scripts that time kernels and models; ``results/`` holds committed runs."""
