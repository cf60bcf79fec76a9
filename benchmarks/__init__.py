"""Side-by-side CRI latency benchmarks: the same workload against crictld and containerd's CRI."""
