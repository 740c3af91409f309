"""Execution backends for pipesynth schedules."""
