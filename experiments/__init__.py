"""Quality experiments on the fast training path: the backbone x knowledge x seed grid (`grid`),
its statistics (`stats`) and its report (`report`); `llm4msr grid` runs them. Speed benchmarks
live in `bench/`."""
