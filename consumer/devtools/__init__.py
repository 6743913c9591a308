"""Dev tooling: the demo, the providers' simulator, child processes and seeding for tests and benches."""
