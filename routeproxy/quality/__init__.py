"""Quality: the intervals and the verdict (pure), the A/B analysis of a period, the remembered decisions that
feedback rates, and the rollout (a pure state machine) with the controller that runs it for all replicas."""
