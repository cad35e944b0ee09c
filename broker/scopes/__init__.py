"""The platform team's manifest tooling: load from files, diff, scenario tests."""
