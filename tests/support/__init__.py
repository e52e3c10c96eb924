"""Helpers shared by the test tiers: real servers, isolated per run."""
