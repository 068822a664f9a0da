"""`policyctl replay`: past traffic from the decision log decided again under a new policy
set (`run`), and what changed (`report`). See docs/replay.md."""
