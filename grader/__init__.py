"""Autograder for Experiment 6 (see grader/README.md). Entry point: python -m grader."""
