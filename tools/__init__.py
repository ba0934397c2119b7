"""Test and rehearsal tooling of taskd (harness, soak, fault proxy): never imported by daemon/."""
