"""What people read: a run's report files, the day at a glance, and the words they use (labels)."""
