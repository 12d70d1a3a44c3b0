"""One run end to end, and the commands over runs: plan, policy, warm-up, run, result, report, tune, evaluate, plot."""
